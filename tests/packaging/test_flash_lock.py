"""The `flash` extra's lock (constraints/flash.txt) against pyproject's pins: what README's FA4 install uses."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def flash_lock() -> dict[str, str]:
    """``{distribution: version}`` of constraints/flash.txt."""
    pins = {}
    for line in (ROOT / "constraints" / "flash.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def test_the_lock_pins_every_package_of_the_flash_extra_at_pyprojects_version():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["flash"]
    lock = flash_lock()
    for requirement in extra:
        name = _name(requirement)
        assert name in lock, f"{name} of the flash extra is not in constraints/flash.txt"
        pinned = re.search(r"==\s*([^\s;,]+)", requirement)
        if pinned:
            assert lock[name] == pinned.group(1), f"{name}: pyproject pins {pinned.group(1)}, the lock {lock[name]}"
    assert "nvidia-cutlass-dsl-libs-cu13" in lock  # the [cu13] extra of nvidia-cutlass-dsl


def test_the_locks_cuda_python_and_cuda_bindings_share_a_minor_release():
    """cuda-python X.Y.Z requires cuda-bindings ~= X.Y.Z: a lock that moves one without the other does not resolve."""
    lock = flash_lock()
    python_release, bindings_release = (lock[name].split(".")[:2] for name in ("cuda-python", "cuda-bindings"))
    assert python_release == bindings_release
    assert tuple(map(int, lock["cuda-bindings"].split("."))) >= tuple(map(int, lock["cuda-python"].split(".")))

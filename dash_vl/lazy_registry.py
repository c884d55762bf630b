"""A name → object registry whose objects are imported on first use, so that listing the names
(CLI choices, ``--help``) costs no torch or transformers import."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any


class LazyRegistry(Mapping[str, Any]):
    """Names mapped to ``"package.module"`` (the module) or ``"package.module:attribute"``.

    The keys are known at once; a value is imported when it is first read and kept.
    """

    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = dict(paths)
        self._loaded: dict[str, Any] = {}

    @property
    def paths(self) -> dict[str, str]:
        """Each name's import path."""
        return dict(self._paths)

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            module, _, attribute = self._paths[name].partition(":")
            loaded = importlib.import_module(module)
            self._loaded[name] = getattr(loaded, attribute) if attribute else loaded
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def lazy_attributes(module_name: str, paths: dict[str, str]) -> Any:
    """A module ``__getattr__`` that imports ``paths[name]`` (``"module:attribute"``) on first access."""

    def __getattr__(name: str) -> Any:
        if name not in paths:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        module, _, attribute = paths[name].partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded

    return __getattr__

"""Model files that reach these machines inside PyPI packages, found without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_directory(package: str, install: str) -> Path:
    """The folder of the installed top-level ``package`` (an import name).

    The package is located with ``importlib`` and never imported (weight packages may import
    tools dash_vl does not need).

    Raises:
        FileNotFoundError: naming ``install`` (the pip command), if the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))

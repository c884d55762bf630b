"""Model-family adapters, found by ``config.model_type``. A new family is one module plus one line here."""

from __future__ import annotations

from torch import nn

from dash_vl.adapters.base import ModelAdapter
from dash_vl.adapters.gemma3 import Gemma3TextAdapter
from dash_vl.adapters.internvl import InternVLAdapter
from dash_vl.adapters.llava import LlavaAdapter
from dash_vl.adapters.llava_next import LlavaNextAdapter
from dash_vl.adapters.llava_onevision import LlavaOnevisionAdapter
from dash_vl.adapters.qwen2_vl import Qwen2VLAdapter
from dash_vl.adapters.qwen3_5 import Qwen3_5Adapter, Qwen3_5TextAdapter
from dash_vl.adapters.qwen3_vl import Qwen3VLAdapter
from dash_vl.adapters.text_llm import CausalLMAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    Qwen2VLAdapter, Qwen3VLAdapter, LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, InternVLAdapter, Qwen3_5Adapter,
    Gemma3TextAdapter, Qwen3_5TextAdapter, CausalLMAdapter,
)


def adapter_class_for(model_type: str) -> type[ModelAdapter]:
    """The adapter class for an HF ``config.model_type``.

    Raises:
        TypeError: if no adapter handles ``model_type``.
    """
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    supported = sorted(t for adapter in ADAPTERS for t in adapter.model_types)
    raise TypeError(f"dash_vl has no adapter for model type {model_type!r}; supported: {supported}")


def adapter_for(model: nn.Module) -> ModelAdapter:
    """Wrap an HF model in the adapter of its family (see :func:`adapter_class_for`)."""
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no HF config; dash_vl needs a transformers model")
    return adapter_class_for(config.model_type)(model)


__all__ = ["ADAPTERS", "ModelAdapter", "adapter_class_for", "adapter_for"]

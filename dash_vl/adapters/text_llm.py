"""Text-only decoder LLMs with HF's pre-norm layers (``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
``Qwen3ForCausalLM``, ``MistralForCausalLM``): every token is text, so ``scope="visual"`` is refused."""

from __future__ import annotations

from dash_vl.adapters.base import ModelAdapter


class CausalLMAdapter(ModelAdapter):
    model_types = ("llama", "qwen2", "qwen3", "mistral")

"""Gemma-3 text models (``Gemma3ForCausalLM``, ``config.model_type == "gemma3_text"``, also what a
Gemma-3 GGUF file loads as).

A Gemma-3 decoder layer differs from the pre-norm default in four ways this adapter maps:

* four RMS norms per layer: ``input_layernorm`` before attention, ``post_attention_layernorm`` on
  the attention output *before* the residual add, ``pre_feedforward_layernorm`` and
  ``post_feedforward_layernorm`` around the MLP;
* local (``"sliding_attention"``) and global (``"full_attention"``) layers alternate
  (``config.layer_types``), each kind with its own rotary base: the rotary module takes the kind.
  The local layers' window is the engine's general mechanism (:mod:`dash_vl.engine.layer_inputs`);
* the embedding scale (``sqrt(hidden)``) lives in ``embed_tokens`` and the per-head ``q_norm`` /
  ``k_norm`` and ``query_pre_attn_scalar`` scaling in the attention module, which the default
  :meth:`~dash_vl.adapters.base.ModelAdapter.attention_queries` already reads.

What ``U`` is: the paper's ``U_t`` is the attention sub-layer's output before the residual add.
In Gemma-3 the residual stream receives ``post_attention_layernorm(o_proj(attention))``, so ``U``
is taken *after* ``post_attention_layernorm``, the term actually added to the residual stream.
Consequence: ``U`` is RMS-normalised per token and then scaled by the norm's learned per-channel
weight, so ``‖U_t‖₂`` no longer carries how large the raw attention output was; it measures
how the output's direction lines up with that weight (``‖w ⊙ u/rms(u)‖₂``). DASH on Gemma-3 thus
scores a different quantity than on Llama-style layers, and its calibration does not carry over.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dash_vl.adapters.base import ModelAdapter


class Gemma3TextAdapter(ModelAdapter):
    model_types = ("gemma3_text",)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if getattr(self.text_config, "use_bidirectional_attention", False):
            raise ValueError(
                "this Gemma-3 attends bidirectionally (use_bidirectional_attention=True, e.g. EmbeddingGemma); "
                "dash_vl halts tokens of causal decoders only"
            )

    def position_embeddings(
        self, hidden_states: torch.Tensor, rope_ids: torch.Tensor, layer_type: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_model.rotary_emb(hidden_states, rope_ids, layer_type)

    def attention_update(self, layer: nn.Module, hidden_states: torch.Tensor, **attention_kwargs: Any) -> torch.Tensor:
        """``post_attention_layernorm(self_attn(input_layernorm(h)))`` ``(batch, T, hidden)``: what the
        layer adds to its residual stream."""
        return layer.post_attention_layernorm(super().attention_update(layer, hidden_states, **attention_kwargs))

    def feed_forward(self, layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """``h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))``."""
        return hidden_states + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden_states)))

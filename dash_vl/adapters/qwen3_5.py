"""Qwen3.5 (HF ``Qwen3_5ForConditionalGeneration``; the text-only ``Qwen3_5ForCausalLM`` too).

Qwen3.5's language model is hybrid (``config.layer_types``): most layers mix tokens with a
gated delta net (``"linear_attention"``: a short causal convolution, then a gated delta-rule
recurrence), one in every ``full_attention_interval`` with gated softmax attention
(``"full_attention"``: ``q_proj`` yields each head's query and an output gate; per-head
``q_norm`` / ``k_norm``; rotary on the first ``partial_rotary_factor`` of each head).

What halting means in a linear-attention layer (the engine's side is in
:mod:`dash_vl.engine.language_model`): from ``l_s`` on such a layer runs over the active tokens
only, in prompt order, so its convolution window and recurrent state, what it caches for
decoding, are those of the active sequence. The compact layout is left-padded and HF zeroes
padding slots before the mixer (a zero token writes nothing into the state and is the
convolution's own zero padding), so each prompt's state is that of its active tokens alone. At a
linear decision layer DASH scores the mixer's output over the whole prompt (``U``, before the
residual add); the layer itself then runs on the active tokens, as every later one does.

Visual tokens and M-RoPE ids are Qwen2-VL's (:class:`~dash_vl.adapters.qwen2_vl.Qwen2VLAdapter`),
with Qwen3-VL's interleaved sections inside HF's rotary module. Encoder-side halting is not
offered: the ViT adds interpolated learned position embeddings the Qwen2-VL tower adapter does
not know.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from dash_vl.adapters.base import ATTENTION_KINDS, ModelAdapter, VisionLanguageAdapter, rotated
from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.adapters.qwen2_vl import MRopeIds, Qwen2VLAdapter

LINEAR_ATTENTION = "linear_attention"


class GatedDeltaNetLayers(ModelAdapter):
    """The decoder layers of Qwen3.5's language model: gated delta net or gated attention as token mixer."""

    layer_kinds: ClassVar[tuple[str, ...]] = (*ATTENTION_KINDS, LINEAR_ATTENTION)

    @property
    def attention_output_gate(self) -> bool:
        """Always: HF's Qwen3.5 attention gates its output whatever the config says."""
        return True

    def attention_update(self, layer: nn.Module, hidden_states: torch.Tensor, **attention_kwargs: Any) -> torch.Tensor:
        """The token mixer's output ``U`` ``(batch, T, hidden)``, before the residual add. A linear-attention
        layer runs from a zero state and caches nothing here (``attention_mask``: its ``(batch, T)`` padding mask)."""
        if not is_linear(layer):
            return super().attention_update(layer, hidden_states, **attention_kwargs)
        return layer.linear_attn(hidden_states=layer.input_layernorm(hidden_states), attention_mask=attention_kwargs["attention_mask"])

    def attention_queries(
        self, layer: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """The query half of ``q_proj``'s per-head (query, gate) pairs, ``q_norm``, partial rotary, scaled;
        ``(batch, heads, Q, head_dim)``."""
        attention = self._attention(layer)
        normed = layer.input_layernorm(hidden_states)
        query, _ = attention.q_proj(normed).view(*normed.shape[:-1], -1, 2 * attention.head_dim).chunk(2, dim=-1)
        return rotated(attention.q_norm(query).transpose(1, 2), position_embeddings) * attention.scaling

    def attention_keys(
        self, layer: nn.Module, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        self._attention(layer)
        return super().attention_keys(layer, hidden_states, position_embeddings)

    @staticmethod
    def _attention(layer: nn.Module) -> nn.Module:
        """``layer.self_attn``.

        Raises:
            ValueError: for a linear-attention layer, which has no attention weights to read.
        """
        if is_linear(layer):
            raise ValueError(
                "this method reads attention weights, and the layer it reads is a linear-attention (gated delta net) "
                "layer, which has none; choose a start_layer whose layers read are full-attention layers "
                "(config.text_config.layer_types)"
            )
        return layer.self_attn


def is_linear(layer: nn.Module) -> bool:
    """Whether a Qwen3.5 decoder layer mixes tokens with a gated delta net rather than attention."""
    return hasattr(layer, "linear_attn")


class Qwen3_5Adapter(GatedDeltaNetLayers, Qwen2VLAdapter):
    model_types = ("qwen3_5",)

    def encoder_adapter(self) -> EncoderAdapter:
        return VisionLanguageAdapter.encoder_adapter(self)


class Qwen3_5TextAdapter(GatedDeltaNetLayers, MRopeIds):
    """``Qwen3_5ForCausalLM``: the same layers and rotary (text positions in all three M-RoPE rows), every token text."""

    model_types = ("qwen3_5_text",)

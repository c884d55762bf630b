"""The attention mask and rotary embeddings each decoder layer gets in one call over one key layout.

Layers of one model may differ in both where a family mixes attention kinds
(``config.layer_types``): a ``"sliding_attention"`` layer masks keys ``config.sliding_window`` or
more positions back (Gemma-3's local layers, Qwen2's layers from ``max_window_layers`` on,
Mistral's every layer), and a family may give each kind its own rotary embedding (Gemma-3's local
and global rope bases, see :meth:`dash_vl.adapters.base.ModelAdapter.position_embeddings`).

HF's sliding-window cache layers keep only the latest ``sliding_window - 1`` slots, so such a
layer attends over the trailing slots of the layout, not all of it: the caller says how many
keys each layer attends over. Masks and rotary embeddings are built once per distinct kind.

A ``"linear_attention"`` layer (a recurrent token mixer, Qwen3.5's gated delta net) takes no key
mask: as in HF, its ``attention_mask`` is the ``(batch, Q)`` padding mask of the queries, with
which the layer zeroes padding slots before they reach its state; ``None`` where nothing is
padding or the call has one query (a generated token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dash_vl.adapters.base import ModelAdapter
from dash_vl.engine.masks import causal_mask, sliding_window_mask

RotaryEmbeddings = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class KeyLayout:
    """The key slots a group of layers attends over, queries being the last of them.

    Attributes:
        valid: ``(batch, S)`` bool, False on padding slots.
        positions: ``(batch, S)`` long, the sequence index (padding included) each slot holds,
            increasing along the slots.
        all_valid: whether every slot is valid, where the host knows it without waiting.
        span: the length of the whole sequence the positions index; no key is ``span`` or more
            positions before a query, so a window of at least ``span`` never masks anything.
    """

    valid: torch.Tensor
    positions: torch.Tensor
    all_valid: bool | None
    span: int

    @classmethod
    def sequence(cls, valid: torch.Tensor, all_valid: bool | None) -> KeyLayout:
        """The full-length layout: slot ``j`` holds sequence index ``j`` (``valid`` ``(batch, S)``)."""
        positions = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
        return cls(valid, positions, all_valid, span=valid.shape[1])


class LayerInputs:
    """``attention_mask`` and ``position_embeddings`` per decoder layer for queries ``hidden``.

    Args:
        adapter: the model's adapter (layer kinds, window, rotary embeddings).
        hidden: ``(batch, Q, hidden)`` query states; their dtype is the eager mask's.
        rope_ids: rotary ids ``(..., batch, Q)`` of the queries.
        layout: the key slots; the queries are its last ``Q``.
    """

    def __init__(self, adapter: ModelAdapter, hidden: torch.Tensor, rope_ids: torch.Tensor, layout: KeyLayout) -> None:
        self.adapter = adapter
        self.hidden = hidden
        self.rope_ids = rope_ids
        self.layout = layout
        self.windows = adapter.layer_windows
        """Per layer, its sliding window in positions (``None``: full attention)."""
        self._rotary: dict[str, RotaryEmbeddings] = {}
        self._masks: dict[tuple[int | None, int], torch.Tensor | None] = {}

    def over(self, layout: KeyLayout) -> LayerInputs:
        """The same queries over another key layout, sharing the rotary embeddings already built."""
        other = LayerInputs(self.adapter, self.hidden, self.rope_ids, layout)
        other._rotary = self._rotary
        return other

    def for_layer(self, index: int, key_length: int | None = None) -> dict[str, Any]:
        """Keyword arguments of decoder layer ``index`` attending over the last ``key_length`` slots
        of the layout (all of them by default)."""
        layer_type = self.adapter.layer_types[index]
        key_length = self.layout.valid.shape[1] if key_length is None else key_length
        mask = self._padding() if layer_type == "linear_attention" else self._mask(self.windows[index], key_length)
        return dict(attention_mask=mask, position_embeddings=self.position_embeddings(layer_type))

    def position_embeddings(self, layer_type: str) -> RotaryEmbeddings:
        """``(cos, sin)`` of the queries for layers of kind ``layer_type``."""
        if layer_type not in self._rotary:
            self._rotary[layer_type] = self.adapter.position_embeddings(self.hidden, self.rope_ids, layer_type)
        return self._rotary[layer_type]

    def _padding(self) -> torch.Tensor | None:
        """The ``(batch, Q)`` bool padding mask of the queries for a linear-attention layer; ``None`` where
        the host knows none is padding or there is one query."""
        query_length = self.hidden.shape[1]
        if query_length == 1 or self.layout.all_valid:
            return None
        return self.layout.valid[:, -query_length:]

    def _mask(self, window: int | None, key_length: int) -> torch.Tensor | None:
        """The mask of a layer with sliding window ``window`` (``None``: full attention) over the last
        ``key_length`` slots; a window of at least the span masks as full attention does."""
        windowed = window is not None and window < self.layout.span
        key = (window if windowed else None, key_length)
        if key not in self._masks:
            implementation, query_length = self.adapter.attn_implementation, self.hidden.shape[1]
            valid = self.layout.valid[:, -key_length:]
            if windowed:
                mask = sliding_window_mask(
                    implementation, valid, self.layout.positions[:, -key_length:], query_length, window, self.hidden.dtype
                )
            else:
                mask = causal_mask(implementation, valid, query_length, self.hidden.dtype, all_valid=self.layout.all_valid)
            self._masks[key] = mask
        return self._masks[key]

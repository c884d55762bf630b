"""The tensors a halting policy may read at the decision layer, computed only when it asks.

:class:`DecisionProbe` implements :class:`dash_vl.methods.DecisionInputs` for one decision of one
prefill (one per stage where the method decides at several layers). The engine fills in what it
has anyway (the states entering layers ``l_s - 1`` and ``l_s``, the cache); the rest (attention
update, block update, attention rows) is computed on demand.
Policies read every tensor in the ``(batch, T)`` padded layout; the attention and the block of
layer ``l_s`` run in the layout the engine runs its layers in (padded or packed,
:mod:`dash_vl.engine.layouts`) and their results are laid back out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dash_vl import hf_compat
from dash_vl.adapters.base import ModelAdapter
from dash_vl.engine.layouts import TokenLayout


class KeyValueCapture:
    """Stands in for the cache at the decision layer: keeps the keys and values, stores nothing.

    The decision layer attends over all ``T`` tokens but caches only the active ones, so the
    engine takes the keys (rotary already applied) and values from here and gathers them.
    ``None`` where the layer is a linear-attention layer (it has none, and is not given this cache).
    """

    key: torch.Tensor | None = None
    value: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self.key, self.value = key, value
        return key, value


class KeyRecorder:
    """Stands in for the cache in one layer's call: passes everything on to ``cache`` and keeps the keys
    its ``update`` returns, i.e. every key the layer attended over, also where the cache layer
    itself keeps only the latest slots of a sliding window; ``None`` after a linear-attention layer,
    which updates its recurrent state through the cache and has no keys."""

    keys: torch.Tensor | None = None

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = self.cache.update(key, value, *args, **kwargs)
        self.keys = key
        return key, value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cache, name)


@dataclass(frozen=True)
class PreviousLayer:
    """What the engine keeps of layer ``l_s - 1``'s run over the tokens it ran on (the whole prompt
    before the first decision, that stage's active tokens before a later one).

    Attributes:
        hidden_states: ``(batch, T, hidden)`` entering it.
        keys: ``(batch, kv_heads, T, head_dim)``, rotary applied: every key it attended over; ``None`` where
            it is a linear-attention layer.
        position_embeddings: ``(cos, sin)`` of its kind of layer over the prompt (a family may give
            each kind its own rotary).
        window: its sliding window where it is a ``"sliding_attention"`` layer; ``None`` for full attention.
    """

    hidden_states: torch.Tensor
    keys: torch.Tensor | None
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    window: int | None


class DecisionProbe:
    """Lazy decision-layer inputs of one prefill (see :class:`dash_vl.methods.DecisionInputs`).

    Args:
        adapter: the model's adapter.
        layer_index: the decision layer ``l_s``.
        hidden_states: ``(batch, T, hidden)`` entering layer ``l_s``.
        previous: layer ``l_s - 1``'s states, keys and rotary; ``None`` at ``l_s = 0``.
        valid, eligible: ``(batch, T)`` bool.
        eligible_counts: eligible tokens per sample, on the host.
        attention_kwargs: the full-sequence ``attention_mask`` and ``position_embeddings`` of layer ``l_s``
            in ``layout``.
        layout: the layout layer ``l_s`` runs in; ``layout_states`` are ``hidden_states`` in it.
        vision_evidence: the encoder's evidence over the prompt (score, metric, unit, selected), where recorded.
        valid_counts: valid tokens per sample, on the host.
        positions: ``(batch, T)`` long, the prompt position of each slot.
        rotary: ``(cos, sin)`` of layer ``l_s``'s kind over the slots, ``(batch, T, head_dim)``.
        stage: which decision this is (0 for the first).
        initial_eligible_counts: eligible tokens per sample at the first decision, on the host.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        layer_index: int,
        hidden_states: torch.Tensor,
        previous: PreviousLayer | None,
        valid: torch.Tensor,
        eligible: torch.Tensor,
        eligible_counts: list[int],
        attention_kwargs: dict[str, Any],
        layout: TokenLayout,
        layout_states: torch.Tensor,
        vision_evidence: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
        valid_counts: list[int],
        positions: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        stage: int,
        initial_eligible_counts: list[int],
    ) -> None:
        self.adapter = adapter
        self.layer_index = layer_index
        self.layer: nn.Module = adapter.layers[layer_index]
        self.hidden_states = hidden_states
        self.previous = previous
        self.valid = valid
        self.eligible = eligible
        self.eligible_counts = eligible_counts
        self.attention_kwargs = attention_kwargs
        self.layout = layout
        self.layout_states = layout_states
        self._vision_evidence = vision_evidence
        self.valid_counts = valid_counts
        self.positions = positions
        self.rotary = rotary
        self.stage = stage
        self.initial_eligible_counts = initial_eligible_counts
        self.capture = KeyValueCapture()
        self._layout_update: torch.Tensor | None = None
        self._attention_update: torch.Tensor | None = None
        self.block_output: torch.Tensor | None = None
        """``(batch, T, hidden)`` leaving layer ``l_s``, where :meth:`block_update` ran it."""

    def attention_update(self) -> torch.Tensor:
        """Also leaves layer ``l_s``'s keys and values, ``(batch, kv_heads, T, head_dim)``, in :attr:`capture`."""
        if self._attention_update is None:
            self._layout_update = self._mixer_update()
            if self.capture.key is not None:
                self.capture.key = self.layout.unpack_heads(self.capture.key)
                self.capture.value = self.layout.unpack_heads(self.capture.value)
            self._attention_update = self.layout.unpack(self._layout_update)
        return self._attention_update

    def _mixer_update(self) -> torch.Tensor:
        """The token mixer's output over :attr:`layout_states`, in the layout. A linear-attention mixer runs row
        by row (:meth:`~dash_vl.engine.layouts.TokenLayout.run_by_row`), from a zero state per sample."""
        if self.adapter.layer_types[self.layer_index] != "linear_attention":
            return self.adapter.attention_update(
                self.layer, self.layout_states, **hf_compat.cache_argument(self.capture), **self.attention_kwargs
            )

        def recurrence(rows: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
            return self.adapter.attention_update(self.layer, rows, attention_mask=padding)

        return self.layout.run_by_row(recurrence, self.layout_states)

    def block_update(self) -> torch.Tensor:
        if self.block_output is None:
            self.attention_update()
            output = self.adapter.feed_forward(self.layer, self.layout_states + self._layout_update)
            self.block_output = self.layout.unpack(output)
        return self.block_output - self.hidden_states

    def previous_keys(self) -> torch.Tensor:
        if self.previous is None:
            raise ValueError(
                f"this method reads layer {self.layer_index - 1}, before its decision layer {self.layer_index}, which "
                "did not run on these tokens: it needs start_layer >= 1 and no two decision layers in a row"
            )
        if self.previous.keys is None:
            raise ValueError(
                f"this method reads the attention of layer {self.layer_index - 1}, before its decision layer "
                f"{self.layer_index}, and that layer is a linear-attention layer, which has none; choose a start_layer "
                "right after a full-attention layer (config.layer_types)"
            )
        # under a device_map layer l_s - 1 may sit on another GPU than layer l_s
        return self.previous.keys.to(self.hidden_states.device)

    def last_query_attention(self) -> torch.Tensor:
        previous_layer = self.adapter.layers[self.layer_index - 1]
        device = next(previous_layer.parameters()).device
        previous_keys = self.previous_keys()
        cos, sin = (part[..., -1:, :].to(device) for part in self.previous.position_embeddings)
        last_states = self.previous.hidden_states[:, -1:].to(device)
        query = self.adapter.attention_queries(previous_layer, last_states, (cos, sin)).to(self.hidden_states.device)
        return self._attention(query, previous_keys, self.previous.window).squeeze(2)

    def window_attention(self, queries: int) -> torch.Tensor:
        rotary = tuple(part[:, -queries:] for part in self.rotary)
        query = self.adapter.attention_queries(self.layer, self.hidden_states[:, -queries:], rotary)
        keys = self.adapter.attention_keys(self.layer, self.hidden_states, self.rotary)
        return self._attention(query, keys, self.adapter.layer_windows[self.layer_index])

    def _attention(self, query: torch.Tensor, keys: torch.Tensor, window: int | None) -> torch.Tensor:
        """Softmax probabilities ``(batch, heads, Q, T)`` float32 of scaled ``query`` ``(batch, heads, Q, d)``, the
        last ``Q`` slots, over ``keys`` ``(batch, kv_heads, T, d)``: valid keys at or before each query's
        slot, and less than ``window`` positions back (``None``: no window)."""
        query_count = query.shape[2]
        keys = keys.repeat_interleave(query.shape[1] // keys.shape[1], dim=1)
        logits = query.float() @ keys.float().transpose(-1, -2)
        slots = torch.arange(self.valid.shape[1], device=self.valid.device)
        query_slots = slots[-query_count:]
        visible = self.valid[:, None, :] & (slots[None, None, :] <= query_slots[None, :, None])
        if window is not None:  # keys window or more positions before the query are masked
            query_positions = self.positions[:, -query_count:]
            visible = visible & (self.positions[:, None, :] > query_positions[:, :, None] - window)
        logits = logits.masked_fill(~visible[:, None], -torch.inf)
        return logits.softmax(dim=-1)

    def normed_hidden_states(self) -> torch.Tensor:
        # under a device_map the final norm may sit on another GPU than layer l_s
        return self.adapter.final_norm(self.hidden_states).to(self.hidden_states.device)

    def vision_evidence(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._vision_evidence is None:
            raise ValueError("no vision-encoder evidence was recorded for this prompt")
        return self._vision_evidence

"""Decoding over a static KV cache under halting: every layer's key slots in a buffer of fixed length.

After a halted prefill the layers cache different numbers of slots: the full prompt's ``T`` below
``l_s``, the compact ``K`` from ``l_s`` on (a multi-stage halting, more lengths). The layout is
decided once, after the prefill: layer ``i`` gets key and value buffers of ``P_i + N`` slots
(``P_i``: its prefill slots, ``N``: the new tokens the static cache was sized for), rounded up to a
multiple of :data:`SLOT_ALIGNMENT` (:func:`buffer_slots`), and the layers
that share one prompt layout share one :class:`SlotGroup`: which slots hold a valid token, the
sequence index each holds, and the next slot to write. A later call of ``Q`` new tokens then has
fixed shapes and no host read: it writes slots ``filled .. filled + Q - 1`` of every layer in
place (device-side indices), and each layer attends over its whole buffer with a boolean mask
(valid, written, causal, sliding window measured in the positions the slots hold). So one decode
step can be captured once as a CUDA graph and replayed (:mod:`dash_vl.engine.decode_graph`).

A linear-attention layer (Qwen3.5's gated delta nets) has no key slots: its convolution window and
recurrent state have one shape whatever the prompt, and its decode steps update them in place. The
prefill's cache layer that holds them is kept (:attr:`StaticSlots.recurrent`) and a later prefill of the
same shape is copied into its tensors, so a recorded step reads and writes the same addresses.

The attention of these steps is :func:`slot_attention`: grouped-query attention as two matrix
products over the buffer, each key and value read once (no copy per query head, as HF's SDPA path
makes where a mask is given), whatever implementation the model was loaded with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dash_vl import hf_compat
from dash_vl.engine.layer_inputs import KeyLayout

SLOT_ATTENTION = "dash_vl_slots"
"""The attention implementation name of static-cache steps (registered with transformers on import)."""

SLOT_ALIGNMENT = 8
"""Every buffer's slot count is a multiple of this. A step's attention is two matrix products over the
buffer, and cuBLAS takes its fast kernels only where the slot count keeps every row 16-byte aligned: on an
NVIDIA H100 (torch 2.11, bf16, Qwen2-VL-7B heads, one query) a call over 16 513 slots took 569 µs, over
16 514 188 µs, over 16 512 or 16 520 110–127 µs (``eval/results/slot_alignment_h100.md``). The slots past
``P_i + N`` are never valid, so every mask leaves them out."""


def buffer_slots(prompt_slots: int, capacity: int) -> int:
    """The slots of a buffer for ``prompt_slots`` prefill slots and ``capacity`` new tokens: their sum
    rounded up to a multiple of :data:`SLOT_ALIGNMENT`."""
    return -(-(prompt_slots + capacity) // SLOT_ALIGNMENT) * SLOT_ALIGNMENT


def slot_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor,
    scaling: float | None = None, dropout: float = 0.0, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of ``Q`` new queries over a static buffer, HF's attention-function signature.

    Args:
        query: ``(batch, heads, Q, head_dim)``.
        key, value: ``(batch, kv_heads, L, head_dim)``, the layer's whole buffer.
        attention_mask: ``(batch, 1, Q, L)`` bool, True where a query may attend a slot.
        scaling: the softmax scale (``head_dim ** -0.5`` if ``None``).

    Returns:
        ``(batch, Q, heads, head_dim)`` and no weights. The query heads of one key head are taken
        together (``(batch, kv_heads, group * Q, head_dim)``), so each key and value is read once;
        scores are softmaxed in float32, as HF's eager attention does.
    """
    batch, heads, queries, head_dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = head_dim**-0.5 if scaling is None else scaling
    grouped = query.reshape(batch, kv_heads, group * queries, head_dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)).view(batch, kv_heads, group, queries, slots)
    scores = (scores.float() * scale).masked_fill(~attention_mask[:, :, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1).to(value.dtype).view(batch, kv_heads, group * queries, slots)
    output = torch.matmul(weights, value).view(batch, heads, queries, head_dim)
    return output.transpose(1, 2), None


hf_compat.register_attention(SLOT_ATTENTION, slot_attention)


@dataclass
class SlotGroup:
    """The key slots of the layers that share one prompt layout, in buffers of ``L`` slots (:func:`buffer_slots`).

    Attributes:
        valid: ``(batch, L)`` bool: slots that hold a token (False on padding and on slots not written yet).
        positions: ``(batch, L)`` long: the sequence index each slot holds (what a sliding window is
            measured in; 0 on slots not written yet).
        filled: ``()`` long, on the device: the next slot to write (prefill slots + new tokens so far).
        prompt_slots: the slots the prefill wrote, ``P``.
    """

    valid: torch.Tensor
    positions: torch.Tensor
    filled: torch.Tensor
    prompt_slots: int

    @classmethod
    def of(cls, layout: KeyLayout, capacity: int) -> SlotGroup:
        """The group of a prefill's ``layout`` (``(batch, P)``) with room for ``capacity`` new slots."""
        batch, prompt_slots = layout.valid.shape
        device = layout.valid.device
        slots = buffer_slots(prompt_slots, capacity)
        valid = torch.zeros(batch, slots, dtype=torch.bool, device=device)
        positions = torch.zeros(batch, slots, dtype=torch.long, device=device)
        valid[:, :prompt_slots] = layout.valid
        positions[:, :prompt_slots] = layout.positions
        return cls(valid, positions, torch.tensor(prompt_slots, device=device), prompt_slots)


class StaticSlots:
    """Every layer's static key and value buffers after a prefill, and what a later call needs of them.

    It stands in for the KV cache in the layers' calls of a static step (:meth:`update`) and builds
    each layer's mask (:meth:`begin`). Nothing here reads the GPU to the host.

    Args:
        cache: the prefill's dynamic cache; layer ``i`` holds ``layouts[i]``'s ``P_i`` slots, or a linear-attention
            layer's states (its layout then only groups it).
        layouts: per decoder layer, the key layout its prefill slots are in; layers given the same
            object share a :class:`SlotGroup` (any number of distinct layouts).
        windows: per layer, its sliding window in positions (``None``: full attention).
        span: the prompt's width ``T``: the first new token is at sequence index ``T``.
        capacity: new tokens the buffers have room for, ``N``.

    Raises:
        ValueError: where a layer's cache does not hold its layout's slots.
    """

    def __init__(
        self, cache: Any, layouts: list[KeyLayout], windows: tuple[int | None, ...], span: int, capacity: int
    ) -> None:
        self.layer_groups, distinct = self._group_layers(layouts)
        self.groups = [SlotGroup.of(layout, capacity) for layout in distinct]
        prefill = self._prefill_slots(cache, layouts)
        self.keys = [None if part is None else self._buffer(part[0], capacity) for part in prefill]
        self.values = [None if part is None else self._buffer(part[1], capacity) for part in prefill]
        """Per layer, its key and value buffers ``(batch, kv_heads, L_i, head_dim)`` (:func:`buffer_slots` of ``P_i`` and
        ``N``); ``None`` for a linear-attention layer."""
        self.recurrent = {index: hf_compat.recurrent_layer(cache, index) for index, part in enumerate(prefill) if part is None}
        """Per linear-attention layer, the prefill's cache layer holding its states, kept for every later prefill."""
        self.recurrent_cache = hf_compat.recurrent_cache(self.recurrent, len(layouts))
        """The cache the linear-attention layers' steps are given: :attr:`recurrent` at their indices."""
        self.windows = windows
        self.span = span
        self.capacity = capacity
        self.written = 0
        """New tokens written so far, counted on the host (``capacity`` at most)."""
        device = self.groups[0].valid.device
        self.step = torch.zeros((), dtype=torch.long, device=device)
        """New tokens written so far, on the device (the graphs advance it)."""
        self._slots: list[torch.Tensor] = []

    @staticmethod
    def _group_layers(layouts: list[KeyLayout]) -> tuple[list[int], list[KeyLayout]]:
        """Per layer, the index of its layout among the distinct ones (by identity, first use first); those layouts."""
        indices: dict[int, int] = {}
        distinct: list[KeyLayout] = []
        for layout in layouts:
            if id(layout) not in indices:
                indices[id(layout)] = len(distinct)
                distinct.append(layout)
        return [indices[id(layout)] for layout in layouts], distinct

    @staticmethod
    def _prefill_slots(cache: Any, layouts: list[KeyLayout]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """Per layer, its cached keys and values ``(batch, kv_heads, P_i, head_dim)``; ``None`` for a linear-attention layer.

        Raises:
            ValueError: where a layer's cache does not hold its layout's slots.
        """
        cached = [
            None if hf_compat.is_recurrent_layer(cache, index) else hf_compat.cached_keys_values(cache, index)
            for index in range(len(layouts))
        ]
        for index, (parts, layout) in enumerate(zip(cached, layouts)):
            if parts is not None and parts[0].shape[2] != layout.valid.shape[1]:
                raise ValueError(
                    f"layer {index} cached {parts[0].shape[2]} slots, its layout has {layout.valid.shape[1]}: a static cache "
                    "needs every slot of every layer"
                )
        return cached

    @classmethod
    def signature(cls, cache: Any, layouts: list[KeyLayout], span: int, capacity: int) -> tuple:
        """What fixes the buffers' shapes and a step's recorded work, for a prefill into ``cache`` over
        ``layouts`` (as in the constructor): the prompt's width, the room for new tokens, which layers share a
        layout, and every layer's cached keys' and values' (or a linear-attention layer's states') shape, dtype
        and device. Two prefills of one signature can share one set of buffers (:meth:`refill`) and one recorded step."""
        layer_groups, _ = cls._group_layers(layouts)
        cached = tuple(
            tuple((tuple(part.shape), part.dtype, part.device) for part in cls._layer_tensors(cache, index))
            for index in range(len(layouts))
        )
        return span, capacity, tuple(layer_groups), cached

    @staticmethod
    def _layer_tensors(cache: Any, index: int) -> list[torch.Tensor]:
        """What ``cache`` holds for layer ``index``: its keys and values, or a linear-attention layer's states."""
        if hf_compat.is_recurrent_layer(cache, index):
            return hf_compat.recurrent_states(hf_compat.recurrent_layer(cache, index))
        return list(hf_compat.cached_keys_values(cache, index))

    def refill(self, cache: Any, layouts: list[KeyLayout]) -> None:
        """Lay out a new prefill (``cache`` over ``layouts``, of this object's :meth:`signature`) in these
        buffers, in place: its slots first, the room after them emptied, no new token written. Every
        tensor a recorded step reads stays the same object."""
        _, distinct = self._group_layers(layouts)
        for group, layout in zip(self.groups, distinct, strict=True):
            group.valid.zero_()
            group.positions.zero_()
            group.valid[:, : group.prompt_slots] = layout.valid
            group.positions[:, : group.prompt_slots] = layout.positions
            group.filled.fill_(group.prompt_slots)
        for index, parts in enumerate(self._prefill_slots(cache, layouts)):
            if parts is None:
                kept, new_states = self.recurrent[index], hf_compat.recurrent_layer(cache, index)
                for state, new in zip(hf_compat.recurrent_states(kept), hf_compat.recurrent_states(new_states), strict=True):
                    state.copy_(new)
                continue
            for buffer, part in zip((self.keys[index], self.values[index]), parts):
                buffer[:, :, : part.shape[2]] = part
                buffer[:, :, part.shape[2] :] = 0
        self.step.zero_()
        self.written = 0

    @staticmethod
    def _buffer(prefill: torch.Tensor, capacity: int) -> torch.Tensor:
        """``(batch, kv_heads, L, head_dim)`` (``L``: :func:`buffer_slots` of ``P`` and ``capacity``): ``prefill`` then zeros."""
        batch, heads, slots, dim = prefill.shape
        buffer = torch.zeros(batch, heads, buffer_slots(slots, capacity), dim, dtype=prefill.dtype, device=prefill.device)
        buffer[:, :, :slots] = prefill
        return buffer

    def reserve(self, new_tokens: int) -> None:
        """Count ``new_tokens`` on the host before a call writes them.

        Raises:
            ValueError: past the capacity the static cache was sized for.
        """
        if self.written + new_tokens > self.capacity:
            raise ValueError(
                f"the static cache has room for {self.capacity} new tokens after the prompt; this call would write "
                f"token {self.written + new_tokens}: size it with max_new_tokens (or generation_config.max_cache_len)"
            )
        self.written += new_tokens

    def begin(self, new_tokens: int) -> list[torch.Tensor]:
        """Mark the next ``new_tokens`` slots of every group written (device-side, in place) and return
        each layer's mask ``(batch, 1, Q, L_i)`` bool for queries that are those tokens."""
        offsets = torch.arange(new_tokens, device=self.step.device)
        query_positions = self.span + self.step + offsets
        masks: dict[tuple[int, int | None], torch.Tensor] = {}
        self._slots = []
        for group in self.groups:
            slots = group.filled + offsets
            self._slots.append(slots)
            group.valid.index_fill_(1, slots, True)
            batch = group.positions.shape[0]
            group.positions.index_copy_(1, slots, query_positions.expand(batch, -1).contiguous())
        layer_masks = []
        for index, group_index in enumerate(self.layer_groups):
            window = self.windows[index]
            key = (group_index, window)
            if key not in masks:
                masks[key] = self._mask(group_index, query_positions, window)
            layer_masks.append(masks[key])
        return layer_masks

    def _mask(self, group_index: int, query_positions: torch.Tensor, window: int | None) -> torch.Tensor:
        """``(batch, 1, Q, L)`` bool: valid slots at or before each query's slot, within ``window`` positions."""
        group, slots = self.groups[group_index], self._slots[group_index]
        slot_index = torch.arange(group.valid.shape[1], device=slots.device)
        allowed = group.valid[:, None, None, :] & (slot_index <= slots[:, None])[None, None]
        if window is not None:
            allowed = allowed & (group.positions[:, None, None, :] > query_positions[None, None, :, None] - window)
        return allowed

    def finish(self, new_tokens: int) -> None:
        """Advance the device counters past the ``new_tokens`` just written."""
        for group in self.groups:
            group.filled.add_(new_tokens)
        self.step.add_(new_tokens)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_index: int, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache interface of a layer's call: write the new ``(batch, kv_heads, Q, head_dim)`` key and
        value into this call's slots of layer ``layer_index``; return its whole buffers."""
        slots = self._slots[self.layer_groups[layer_index]]
        self.keys[layer_index].index_copy_(2, slots, key)
        self.values[layer_index].index_copy_(2, slots, value)
        return self.keys[layer_index], self.values[layer_index]

    def counters(self) -> list[torch.Tensor]:
        """Per layer, its group's ``filled`` counter (what HF's cache object reports as the layer's length)."""
        return [self.groups[group].filled for group in self.layer_groups]

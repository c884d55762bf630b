"""Token layouts the engine runs a group of layers in: padded, or packed end to end.

The engine keeps its bookkeeping (halting decision, KV cache, output) in the ``(batch, S)``
left-padded layout HF uses. A layout says how the decoder layers see those tokens:

* :class:`PaddedLayout`: as they are, ``(batch, S)``, with the masks of :mod:`dash_vl.engine.masks`;
* :class:`Packing`: only the valid slots, sample after sample, as one sequence ``(1, N)``
  attended document-causally, so no FLOP is spent on padding: through FlexAttention
  (:mod:`dash_vl.engine.packed_attention`), or, where the model runs a FlashAttention implementation, through that
  kernel's varlen function (HF's flash path given cumulative sequence lengths). The layers' KV
  cache is written back in the padded layout (:class:`PackedCache`), which is what decoding after
  the prefill reads.

Both have the same methods, so the engine's prefill is written once for either. A layer whose token
mixer is a recurrence along each row (Qwen3.5's gated delta nets: HF's PyTorch delta rule and its
convolution, with or without fla's kernels, run each row as one sequence) runs through
:meth:`TokenLayout.run_by_row`, which under packing lays its tokens back out padded, so each sample's
recurrence starts from its own zero state.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any, Protocol

import torch
from torch.nn.attention.flex_attention import BlockMask

from dash_vl.adapters.base import ModelAdapter
from dash_vl.engine.layer_inputs import KeyLayout, LayerInputs
from dash_vl.engine.masks import is_flash
from dash_vl.engine.packed_attention import document_causal_mask


class TokenLayout(Protocol):
    """How layers see the tokens of a ``(batch, S)`` layout; ``pack`` and ``unpack`` are inverses on valid slots."""

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(batch, S, ...)`` in the layers' layout."""

    def pack_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Rotary ids ``(..., batch, S)`` in the layers' layout."""

    def unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        """States of the layers' layout back to ``(batch, S, ...)``."""

    def unpack_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        """Per-head keys or values of the layers' layout back to ``(batch, heads, S, head_dim)``."""

    def inputs(self, adapter: ModelAdapter, states: torch.Tensor, rope_ids: torch.Tensor) -> LayerInputs:
        """The per-layer mask and rotary embeddings of ``states`` (already in the layers' layout)."""

    def cache(self, cache: Any) -> Any:
        """What the layers get as their KV cache so that ``cache`` fills in the ``(batch, S)`` layout."""

    def run_by_row(self, run: RowRecurrence, states: torch.Tensor) -> torch.Tensor:
        """``run`` (a token mixer recurrent along each row, or a layer with one) over ``states`` of the
        layers' layout, each sample as its own row; the result in the layers' layout."""


RowRecurrence = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""A call ``run(states, padding)`` over ``(batch, S, D)`` states whose rows are one sample each, ``padding``
the ``(batch, S)`` bool mask of their valid slots (``None``: all valid); returns ``(batch, S, D)``."""


class PaddedLayout:
    """The layers see the ``(batch, S)`` layout itself; every conversion is the identity.

    Args:
        keys: the key slots' validity and positions, for the masks.
    """

    def __init__(self, keys: KeyLayout) -> None:
        self.keys = keys

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def pack_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids

    def unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def unpack_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def inputs(self, adapter: ModelAdapter, states: torch.Tensor, rope_ids: torch.Tensor) -> LayerInputs:
        return LayerInputs(adapter, states, rope_ids, self.keys)

    def cache(self, cache: Any) -> Any:
        return cache

    def run_by_row(self, run: RowRecurrence, states: torch.Tensor) -> torch.Tensor:
        return run(states, None if self.keys.all_valid else self.keys.valid[:, -states.shape[1] :])


def run_starts(valid: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` long: each sample's first valid slot of ``valid`` ``(batch, S)`` where its valid slots
    form one contiguous run (left or right padding), ``-1`` where they do not (holes, or none valid)."""
    width = valid.shape[1]
    first = valid.int().argmax(dim=1)
    last = width - 1 - valid.flip(1).int().argmax(dim=1)
    return torch.where(last - first + 1 == valid.sum(dim=1), first, -1)


class Packing:
    """The valid slots of a ``(batch, S)`` layout laid end to end as one sequence of ``N`` tokens.

    Slots are taken sample by sample, in slot order, so each sample's tokens stay contiguous and
    in prompt order; any padding pattern (left, right, holes) packs the same way. Where the host
    knows each sample's slots to be one run (``starts``; HF's left padding, the engine's compact
    layout), packing and unpacking copy those runs whole (one concatenation each, no index
    kernels); elsewhere they gather and scatter through the flat slot index.

    Args:
        valid: ``(batch, S)`` bool, the slots that hold tokens.
        counts: valid slots per sample (known on the host: no wait for the GPU); ``N = sum(counts)``.
        starts: each sample's first valid slot, where every sample's valid slots are one run; ``None``
            for any other pattern.
    """

    def __init__(self, valid: torch.Tensor, counts: list[int], starts: list[int] | None = None) -> None:
        self.valid = valid
        self.batch_size, self.width = valid.shape
        self.counts = counts
        self.total = sum(counts)
        self.starts = starts

    @cached_property
    def index(self) -> torch.Tensor:
        """``(N,)`` long: the flat ``batch * S`` slot of every packed token."""
        return torch.nonzero_static(self.valid.flatten(), size=self.total).squeeze(1)

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.starts is None:
            return tensor.flatten(0, 1).index_select(0, self.index)[None]
        return torch.cat([row[start : start + count] for row, start, count in zip(tensor, self.starts, self.counts)])[None]

    def pack_ids(self, ids: torch.Tensor) -> torch.Tensor:
        if self.starts is None:
            return ids.flatten(-2).index_select(-1, self.index).unsqueeze(-2)
        runs = [ids[..., sample, start : start + count] for sample, (start, count) in enumerate(zip(self.starts, self.counts))]
        return torch.cat(runs, dim=-1).unsqueeze(-2)

    def unpack(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(1, N, ...)`` to ``(batch, S, ...)``, zeros on the slots that hold no token."""
        tail = tensor.shape[2:]
        if self.starts is None:
            padded = tensor.new_zeros(self.batch_size * self.width, *tail)
            return padded.index_copy_(0, self.index, tensor[0]).view(self.batch_size, self.width, *tail)
        zeros = tensor.new_zeros(self.width - min(self.counts), *tail)
        pieces, offset = [], 0
        for start, count in zip(self.starts, self.counts):
            pieces += [zeros[:start], tensor[0, offset : offset + count], zeros[: self.width - start - count]]
            offset += count
        return torch.cat(pieces).view(self.batch_size, self.width, *tail)

    def unpack_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(1, heads, N, head_dim)`` to ``(batch, heads, S, head_dim)``, zeros on the slots that hold no token."""
        return self.unpack(tensor.transpose(1, 2)).transpose(1, 2)

    @cached_property
    def block_mask(self) -> BlockMask:
        """Causal attention within each sample (:func:`dash_vl.engine.packed_attention.document_causal_mask`)."""
        document = torch.div(self.index, self.width, rounding_mode="floor").to(torch.int32)
        return document_causal_mask(document, self.batch_size)

    @cached_property
    def varlen_arguments(self) -> dict[str, torch.Tensor | int]:
        """HF's FlashAttention keywords for the sequence: the samples' cumulative lengths ``(batch + 1,)``
        int32 and, as the longest length, the padded width ``S`` (an upper bound the host knows without
        waiting for the GPU; the kernel only sizes its grid by it)."""
        sample_lengths = self.valid.sum(dim=1, dtype=torch.int32)
        cumulative = torch.nn.functional.pad(sample_lengths.cumsum(0, dtype=torch.int32), (1, 0))
        return dict(cu_seq_lens_q=cumulative, cu_seq_lens_k=cumulative, max_length_q=self.width, max_length_k=self.width)

    def inputs(self, adapter: ModelAdapter, states: torch.Tensor, rope_ids: torch.Tensor) -> LayerInputs:
        return PackedLayerInputs(adapter, states, rope_ids, self)

    def cache(self, cache: Any) -> PackedCache:
        return PackedCache(cache, self)

    def run_by_row(self, run: RowRecurrence, states: torch.Tensor) -> torch.Tensor:
        """Unpacks ``states`` ``(1, N, D)`` to the padded ``(batch, S, D)``, runs ``run`` there with the padding
        mask, and packs the result: the recurrence of one sample never sees another's tokens, and what it
        caches per row is in the padded layout that decoding reads."""
        padding = None if min(self.counts) == self.width else self.valid
        return self.pack(run(self.unpack(states), padding))


class PackedLayerInputs(LayerInputs):
    """The document-causal attention of a :class:`Packing` for every layer, and rotary embeddings of the
    packed ids: the block mask of FlexAttention, or no mask and the varlen keywords
    (:attr:`Packing.varlen_arguments`) where the model runs FlashAttention.

    Sliding-window layers are not masked by their window: the engine packs only where no window
    is shorter than the prompt.
    """

    def __init__(self, adapter: ModelAdapter, states: torch.Tensor, rope_ids: torch.Tensor, packing: Packing) -> None:
        everything = torch.ones(1, packing.total, dtype=torch.bool, device=states.device)
        super().__init__(adapter, states, rope_ids, KeyLayout.sequence(everything, all_valid=True))
        self.packing = packing

    def for_layer(self, index: int, key_length: int | None = None) -> dict[str, Any]:
        arguments = super().for_layer(index, key_length)
        if is_flash(self.adapter.attn_implementation):
            arguments.update(self.packing.varlen_arguments)
        return arguments

    def _mask(self, window: int | None, key_length: int) -> BlockMask | None:
        return None if is_flash(self.adapter.attn_implementation) else self.packing.block_mask


class PackedCache:
    """Stands in for the KV cache of layers that run packed: stores their keys and values in the
    ``(batch, S)`` layout of ``cache`` (nothing where ``cache`` is ``None``) and returns the packed
    ones for the layer to attend over."""

    def __init__(self, cache: Any, packing: Packing) -> None:
        self.cache = cache
        self.packing = packing

    def update(self, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``key``, ``value``: ``(1, kv_heads, N, head_dim)``; the remaining arguments go to ``cache.update``."""
        if self.cache is not None:
            self.cache.update(self.packing.unpack_heads(key), self.packing.unpack_heads(value), *args, **kwargs)
        return key, value

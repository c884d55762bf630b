"""The engine's static decoding state, kept from one ``generate`` call to the next of the same shape.

``generate(cache_implementation="static")`` makes a new ``StaticCache`` every call. Laying out new
buffers for each would also mean recording a new CUDA graph each call (a graph replays the addresses
it was recorded on). So the engine keeps its latest :class:`StaticDecoder`: the buffers
(:class:`~dash_vl.engine.static_slots.StaticSlots`) and the recorded one-token step
(:class:`~dash_vl.engine.decode_graph.DecodeGraph`). A later prefill whose :attr:`StaticDecoder.signature`
is equal (the same batch, prompt width, room for new tokens, per-layer cached shapes and layer
grouping, dtype, device, and the same weight storage) is laid out in those buffers in place and
replays that graph from its first step; any other prefill frees them and lays out its own.

A reused decoder serves only the cache of its latest prefill: its buffers now hold that prompt, so a
call on a cache laid out before is refused (:meth:`StaticDecoder.check_serves`), never answered from
another prompt's keys.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch

from dash_vl.engine.decode_graph import DecodeGraph
from dash_vl.engine.static_slots import StaticSlots


def storage_of(tensors: Iterable[torch.Tensor]) -> tuple[int, ...]:
    """The device addresses of ``tensors`` (a model's parameters and buffers): a recorded step reads its
    weights there, so a weight moved or re-allocated (``model.to``, ``model.half()``) must not be replayed."""
    return tuple(tensor.data_ptr() for tensor in tensors)


class StaticDecoder:
    """One static layout's buffers and its recorded one-token step, and the cache they serve now.

    Args:
        signature: what the buffers' shapes and the recorded step depend on (compared with ``==``).
        slots: the buffers, laid out for ``cache``'s prefill.
        cache: the static cache they serve.
    """

    def __init__(self, signature: tuple, slots: StaticSlots, cache: Any) -> None:
        self.signature = signature
        self.slots = slots
        self.graph: DecodeGraph | None = None
        """The one-token step, recorded at the second one-token step after the first prefill; ``None`` before."""
        self.warmed = False
        """Whether a one-token step ran eagerly (kernels and workspaces loaded): the next one records."""
        self._serves = weakref.ref(cache)

    def serve(self, cache: Any) -> None:
        """Make ``cache`` the one these buffers serve (its prefill was just laid out in them)."""
        self._serves = weakref.ref(cache)

    def check_serves(self, cache: Any) -> None:
        """Refuse ``cache`` if a later prefill took these buffers over.

        Raises:
            ValueError: where ``cache`` is not the cache of the latest prefill of this shape.
        """
        if self._serves() is not cache:
            raise ValueError(
                "this static cache's buffers now hold a later prompt of the same shape (the engine keeps one layout "
                "and its CUDA graph for the next generate call); continue only the latest static cache, or decode "
                "with the dynamic cache (no cache_implementation)"
            )

"""Encoder-side halting (ViT-DASH): DASH's rule inside a vision tower.

One call of the tower (all images, or all videos, of a prompt batch, packed into ``P`` patches):

* blocks ``[0, l_v)`` run on all ``P`` patches;
* block ``l_v``'s attention sub-layer runs over all patches; each patch is scored by
  ``Δattn = ‖U_p‖₂``, the norm of that sub-layer's output before the residual add. Within each
  unit (an image, or a frame of a video), the ``floor(ρ_v · n)`` lowest-scored of its ``n`` patches
  halt before that residual add and keep the state they entered ``l_v`` with;
* the active patches are gathered (their order and rotary tables kept) and run the rest of
  ``l_v`` and every later block, each block's attention segments (frames, or Qwen2.5-VL's windows)
  recut to the active patches, so halted patches are neither queries nor keys there;
* the halted patches' frozen states are written back and the tower's merger receives every
  patch: the language model sees the same visual tokens at the same positions.

With ``ρ_v = 0`` every patch stays active and the tower's output equals its own forward's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dash_vl.config import HaltingConfig
from dash_vl.encoder_adapter import EncoderAdapter
from dash_vl.methods.base import halted_count


@dataclass(frozen=True)
class EncoderReport:
    """What one call of the tower halted.

    Attributes:
        start_layer: the decision block ``l_v``.
        patches: patches of each unit (image or frame), in the call's order.
        kept: of those, how many stayed active from ``l_v`` on.
    """

    start_layer: int
    patches: list[int]
    kept: list[int]

    @property
    def kept_fraction(self) -> float:
        """Active patches from ``l_v`` on over all patches of the call."""
        return sum(self.kept) / sum(self.patches)


def keep_per_unit(scores: torch.Tensor, units: torch.Tensor, ratio: float) -> torch.Tensor:
    """``(P,)`` bool: per unit, every patch but the ``floor(ratio * n)`` lowest of ``scores`` ``(P,)``.

    ``units`` ``(P,)`` long numbers the unit of each patch (``0 .. U-1``); ties halt the earlier patch.
    """
    counts = torch.bincount(units)
    halted = torch.tensor([halted_count(ratio, count) for count in counts.tolist()], device=units.device)
    order = scores.argsort(stable=True)
    order = order[units[order].argsort(stable=True)]
    sorted_units = units[order]
    rank = torch.arange(units.numel(), device=units.device) - (counts.cumsum(0) - counts)[sorted_units]
    kept = torch.ones_like(units, dtype=torch.bool)
    kept[order[rank < halted[sorted_units]]] = False
    return kept


def recut_segments(segments: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Attention segments ``(S + 1,)`` int32 bounds over ``P`` patches, restricted to the sorted patch
    positions ``index`` ``(K,)``: bounds over the ``K`` gathered patches, empty segments dropped."""
    bounds = torch.searchsorted(index, segments.to(index.dtype))
    return torch.unique_consecutive(bounds).to(segments.dtype)


class EncoderHaltingEngine:
    """Runs a vision tower's blocks with encoder-side halting; :meth:`forward` replaces the tower's.

    Args:
        adapter: the tower's :class:`dash_vl.encoder_adapter.EncoderAdapter`.
        config: the knobs; ``vision_ratio`` (``ρ_v``) and ``vision_start_layer`` (``l_v``) are read.

    Raises:
        ValueError: if ``l_v`` falls outside the encoder's blocks.
    """

    def __init__(self, adapter: EncoderAdapter, config: HaltingConfig) -> None:
        self.adapter = adapter
        self.ratio = float(config.vision_ratio or 0.0)
        self.start_layer = config.vision_decision_layer(len(adapter.blocks))
        self.reports: list[EncoderReport] = []
        """One report per call of the tower, oldest first."""

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor, **kwargs: Any) -> Any:
        """Drop-in for the tower's ``forward(pixel_values, grid_thw)``; same output."""
        adapter, blocks, start = self.adapter, self.adapter.blocks, self.start_layer
        layout = adapter.layout(hidden_states, grid_thw, kwargs)
        hidden, rotary = layout.hidden_states, layout.position_embeddings
        for index in range(start):
            hidden = blocks[index](hidden, **adapter.block_arguments(layout.segments[index], rotary))

        decision = blocks[start]
        update = adapter.attention_update(decision, hidden, adapter.block_arguments(layout.segments[start], rotary))
        scores = torch.linalg.vector_norm(update, dim=-1, dtype=torch.float32)
        kept = keep_per_unit(scores, layout.units, self.ratio)
        active = kept.nonzero().squeeze(1)
        patches = torch.bincount(layout.units)
        kept_counts = torch.bincount(layout.units[active], minlength=patches.numel())
        self.reports.append(EncoderReport(start, patches.tolist(), kept_counts.tolist()))

        compact = adapter.feed_forward(decision, hidden[active] + update[active])
        compact_rotary = tuple(part[active] for part in rotary)
        recut: dict[int, torch.Tensor] = {}  # blocks share their segment tensors (frames or windows)
        for index in range(start + 1, len(blocks)):
            segments = layout.segments[index]
            if id(segments) not in recut:
                recut[id(segments)] = recut_segments(segments, active)
            compact = blocks[index](compact, **adapter.block_arguments(recut[id(segments)], compact_rotary))
        return adapter.output(hidden.index_copy(0, active, compact), layout)

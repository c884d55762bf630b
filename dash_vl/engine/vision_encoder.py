"""Encoder-side halting (ViT-DASH): DASH's rule inside a vision tower.

One call of the tower (all images, or all videos, of a prompt batch, packed into ``P`` patches by
the adapter, :mod:`dash_vl.adapters.encoder_base`):

* blocks ``[0, l_v)`` run on all ``P`` patches;
* block ``l_v``'s attention sub-layer runs over all patches; each patch is scored by
  ``Δattn = ‖U_p‖₂``, the norm of that sub-layer's output before the residual add. Within each
  unit (an image, a frame of a video, or a tile), the ``floor(ρ_v · n)`` lowest-scored of its ``n``
  candidates (``[CLS]`` is none) halt before that residual add and keep the state they entered
  ``l_v`` with;
* the active patches are gathered (their order and rotary tables kept) and run the rest of
  ``l_v`` and every later block, each block's attention segments (frames, Qwen2.5-VL's windows,
  tiles) recut to the active patches, so halted patches are neither queries nor keys there;
* the halted patches' frozen states are written back and the tower's merger / projector receives
  every patch: the language model sees the same visual tokens at the same positions.

With ``ρ_v = 0`` every patch stays active and the tower's output equals its own forward's.
Each call's :class:`EncoderReport` carries the theoretical FLOPs of the blocks it ran over those of
the unmodified tower (:func:`encoder_flops`).
``vision_rule="random"`` halts a random set of the same sizes instead (the score's ablation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dash_vl.adapters.encoder_base import EncoderAdapter, EncoderLayout
from dash_vl.config import HaltingConfig
from dash_vl.engine.prefill_flops import LayerShapes
from dash_vl.methods.base import halted_count


@dataclass(frozen=True)
class EncoderReport:
    """What one call of the tower halted.

    Attributes:
        start_layer: the decision block ``l_v``.
        patches: patches of each unit (image, video frame or tile), in the call's order.
        kept: of those, how many stayed active from ``l_v`` on.
        relative_flops: theoretical FLOPs of the tower's transformer blocks in this call over those
            of the unmodified tower's (:func:`encoder_flops`; patch embedding and merger / projector
            excluded); ``1.0`` at ``ρ_v = 0``.
    """

    start_layer: int
    patches: list[int]
    kept: list[int]
    relative_flops: float

    @property
    def kept_fraction(self) -> float:
        """Active patches from ``l_v`` on over all patches of the call."""
        return sum(self.kept) / sum(self.patches)

    def summary(self) -> str:
        return (
            f"encoder halted at block {self.start_layer}: kept {sum(self.kept)} of {sum(self.patches)} patches "
            f"({len(self.patches)} units), {self.relative_flops:.3f}x the encoder FLOPs"
        )


def encoder_flops(
    shapes: LayerShapes, start: int, patches: int, kept: int, full_pairs: list[int], kept_pairs: list[int | None]
) -> tuple[float, float]:
    """``(halted, unmodified)`` theoretical FLOPs of a vision tower's transformer blocks in one call.

    Linear terms (QKV and output projections, MLP) count each patch a block runs on; the attention
    term counts the query-key pairs within each of the block's attention segments (a segment of
    ``n`` patches: ``n²`` pairs). Unmodified, every block runs on all ``patches``. Halted, blocks
    ``< l_v`` do too; block ``l_v`` (``start``) runs its attention sub-layer over all patches (its
    output is the score) and its MLP on the ``kept`` active ones; later blocks run on the active
    patches with their recut segments. Patch embedding and the merger / projector (which see every
    patch either way) are not counted.

    Args:
        shapes: one block's sizes (all alike).
        full_pairs: per block, query-key pairs of its segments over all patches.
        kept_pairs: per block, those of its recut segments over the active patches (read for the
            blocks after ``start`` only).
    """
    unmodified = [shapes.layer_flops(patches, pairs) for pairs in full_pairs]
    decision = shapes.layer_flops(patches, full_pairs[start], mlp_tokens=kept)
    later = [shapes.layer_flops(kept, pairs) for pairs in kept_pairs[start + 1 :]]
    return sum([*unmodified[:start], decision, *later]), sum(unmodified)


def segment_pairs(bounds: torch.Tensor) -> torch.Tensor:
    """``()`` long: query-key pairs of full attention within each segment of cumulative ``bounds``."""
    return (bounds[1:] - bounds[:-1]).long().square().sum()


def keep_per_unit(
    scores: torch.Tensor, units: torch.Tensor, ratio: float, protected: torch.Tensor | None = None
) -> torch.Tensor:
    """``(P,)`` bool: per unit of ``n`` halting candidates, every patch but the ``floor(ratio * n)``
    candidates lowest in ``scores`` ``(P,)``.

    ``units`` ``(P,)`` long numbers the unit of each patch (``0 .. U-1``); ``protected`` ``(P,)`` bool
    marks patches that are no candidates (never halted). Ties halt the earlier patch.
    """
    candidates = units if protected is None else units[~protected]
    counts = torch.bincount(units)
    halted = torch.tensor(
        [halted_count(ratio, count) for count in torch.bincount(candidates, minlength=counts.numel()).tolist()],
        device=units.device,
    )
    if protected is not None:
        scores = scores.masked_fill(protected, torch.inf)
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
        adapter: the tower's :class:`dash_vl.adapters.encoder_base.EncoderAdapter`.
        config: the knobs; ``vision_ratio`` (``ρ_v``) and ``vision_start_layer`` (``l_v``) are read.

    Raises:
        ValueError: if ``l_v`` falls outside the encoder's blocks.
    """

    def __init__(self, adapter: EncoderAdapter, config: HaltingConfig) -> None:
        self.adapter = adapter
        self.ratio = float(config.vision_ratio or 0.0)
        self.rule, self.seed = config.vision_rule, config.seed
        self.start_layer = config.vision_decision_layer(len(adapter.blocks))
        self.shapes = adapter.block_shapes()
        self.reports: list[EncoderReport] = []
        """One report per call of the tower, oldest first."""

    def _scores(self, update: torch.Tensor) -> torch.Tensor:
        """``(P,)`` keep-scores from block ``l_v``'s attention update ``(P, width)``: ``Δattn`` under
        ``"dash"``; under ``"random"``, ``torch.rand(P)`` from a generator seeded with ``seed``."""
        if self.rule == "random":
            generator = torch.Generator().manual_seed(self.seed)
            return torch.rand(update.shape[0], generator=generator).to(update.device)
        return torch.linalg.vector_norm(update, dim=-1, dtype=torch.float32)

    def _report(self, layout: EncoderLayout, active: torch.Tensor) -> tuple[EncoderReport, dict[int, torch.Tensor]]:
        """The call's report, and the segments of the blocks after ``l_v`` recut to the ``active``
        patches ``(K,)`` (keyed by ``id`` of the layout's segment tensor: blocks share them), which
        the blocks then run on. The counts reach the host in one transfer; the FLOPs are host arithmetic."""
        start = self.start_layer
        patches = torch.bincount(layout.units)
        kept = torch.bincount(layout.units[active], minlength=patches.numel())
        distinct = {id(segments): segments for segments in layout.segments}
        later = {id(segments): segments for segments in layout.segments[start + 1 :]}
        recut = {key: recut_segments(segments, active) for key, segments in later.items()}
        pairs = [segment_pairs(bounds) for bounds in (*distinct.values(), *recut.values())]
        counts = torch.cat([patches, kept, torch.stack(pairs)]).tolist()
        units = patches.numel()
        patches_of, kept_of, pair_counts = counts[:units], counts[units : 2 * units], counts[2 * units :]
        full_pairs = dict(zip(distinct, pair_counts))
        kept_pairs = dict(zip(recut, pair_counts[len(distinct) :]))
        halted, unmodified = encoder_flops(
            self.shapes,
            start,
            sum(patches_of),
            sum(kept_of),
            [full_pairs[id(segments)] for segments in layout.segments],
            [kept_pairs.get(id(segments)) for segments in layout.segments],
        )
        return EncoderReport(start, patches_of, kept_of, halted / unmodified), recut

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Drop-in for the tower's ``forward`` (same arguments, same output)."""
        adapter, blocks, start = self.adapter, self.adapter.blocks, self.start_layer
        layout = adapter.layout(args, kwargs)
        hidden, rotary = layout.hidden_states, layout.position_embeddings
        layer_states = [hidden]
        for index in range(start):
            hidden = adapter.run_block(blocks[index], hidden, layout.segments[index], rotary)
            layer_states.append(hidden)

        decision = blocks[start]
        update = adapter.attention_update(decision, hidden, layout.segments[start], rotary)
        scores = self._scores(update)
        active = keep_per_unit(scores, layout.units, self.ratio, layout.protected).nonzero().squeeze(1)
        report, recut = self._report(layout, active)
        self.reports.append(report)

        def with_frozen(compact: torch.Tensor) -> torch.Tensor:
            """Every patch's state ``(P, width)``: the active ones from ``compact``, the halted ones frozen."""
            return hidden.index_copy(0, active, compact)

        compact = adapter.feed_forward(decision, hidden[active] + update[active])
        compact_rotary = tuple(part[active] for part in rotary)
        for index in range(start + 1, len(blocks)):
            if adapter.wants_layer_states:
                layer_states.append(with_frozen(compact))
            compact = adapter.run_block(blocks[index], compact, recut[id(layout.segments[index])], compact_rotary)
        final = with_frozen(compact)
        if not adapter.wants_layer_states:
            return adapter.output(final, layout, None)
        return adapter.output(final, layout, (*layer_states, final))

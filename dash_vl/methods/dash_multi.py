"""DASH's multi-selection schedule, the ablation the DASH paper compares its single decision with:
the same ``Δattn`` rule decides at ``l_s`` and again at each later decision layer, over the tokens
still active there, each time halting ``floor(ρ E)`` of the ``E`` eligible tokens still active.

The default later layers (0.6 and 0.8 of the depth, after ``l_s = 0.4``) are dash_vl's choice;
``stage_layers`` sets them (and gives ``"dash"`` itself the same schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

from dash_vl.methods.dash import DeltaAttention


@dataclass(frozen=True)
class MultiSelectionDeltaAttention(DeltaAttention):
    """:class:`DeltaAttention` at ``l_s`` and at every later decision layer."""

    default_stage_layers = (0.6, 0.8)

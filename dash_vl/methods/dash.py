"""DASH: halt the tokens whose attention update at the decision layer is smallest."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dash_vl.methods.base import DecisionInputs, ScoredHalting


@dataclass(frozen=True)
class DeltaAttention(ScoredHalting):
    """Score each token by ``Δattn = ‖U_t‖₂``, the L2 norm of its attention sub-layer output."""

    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        return torch.linalg.vector_norm(inputs.attention_update(), dim=-1, dtype=torch.float32)

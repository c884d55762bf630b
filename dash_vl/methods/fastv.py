"""FastV (Chen et al., 2024, "An Image is Worth 1/2 Tokens After Layer 2"), as its official code does it.

At layer ``K`` (the decision layer, default 2 for FastV) the visual tokens are ranked by the
attention they received in layer ``K - 1`` from the **last prompt token**, averaged over the
query heads; the ``round(N (1 - ρ))`` highest of the ``N`` eligible tokens are kept and the rest
are dropped before layer ``K`` runs (``round`` is Python's, half to even). Kept tokens keep
their original positions. The attention row is computed from layer ``K - 1``'s query and cached
keys, so no ``T x T`` matrix is built and the model runs under SDPA / FlashAttention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dash_vl.methods.base import DecisionInputs, HaltingMethod, lowest


def rounded_keep_counts(ratio: float, eligible: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` long: ``round(N (1 - ratio))`` kept of the ``N`` eligible tokens per sample.

    Raises:
        ValueError: if a sample's budget rounds to zero kept tokens.
    """
    counts = []
    for sample, total in enumerate(eligible.sum(dim=1).tolist()):
        kept = round(total * (1.0 - ratio))
        if kept < 1:
            raise ValueError(
                f"ratio {ratio} keeps round({total} x {1.0 - ratio:.4g}) = 0 of the {total} eligible tokens of "
                f"sample {sample}; lower the ratio or give the prompt more visual tokens"
            )
        counts.append(kept)
    return torch.tensor(counts, device=eligible.device)


@dataclass(frozen=True)
class FastV(HaltingMethod):
    """Keep the eligible tokens that the last prompt token attends to most at layer ``K - 1``."""

    placement = "layer_input"
    default_scope = "visual"
    default_start_layer = 2

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        received = inputs.last_query_attention().mean(dim=1)
        return lowest(-received, inputs.eligible, rounded_keep_counts(ratio, inputs.eligible))

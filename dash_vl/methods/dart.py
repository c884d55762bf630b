"""DART (Wen et al., 2025, "Stop Looking for Important Tokens ... Duplication Matters More"),
with the rule of its official code.

Before layer ``K`` (the decision layer, default 2 for DART):

1. pivots: the ``pivot_visual`` eligible tokens and the ``pivot_text`` text tokens after the
   last eligible one (the question and chat tail) whose keys in layer ``K - 1`` (rotary
   applied, heads concatenated) have the largest L1 norm;
2. per-pivot budget ``floor(N (1 - ρ) / P)`` for ``N`` eligible tokens and ``P`` pivots found
   (``pivot_visual + pivot_text`` in the official setting, where at least ``pivot_text`` text
   tokens follow the image; fewer when they do not, e.g. a text prompt whose question is
   appended after the halted context, so that about ``(1 - ρ) N`` tokens are still kept);
3. for each pivot in prompt order, the budget's worth of remaining eligible tokens *least*
   cosine-similar to it (on the hidden states entering layer ``K`` through the final norm) are
   kept and leave the pool;
4. kept: the visual pivots and every token chosen in 3; the other eligible tokens are dropped.

So ``min(N, pivot_visual + P · budget)`` eligible tokens are kept (never zero). The official
code walks the pivots in the order of a Python ``set``; here it is prompt order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dash_vl.methods.base import DecisionInputs, HaltingMethod


@dataclass(frozen=True)
class DART(HaltingMethod):
    """Keep the eligible tokens least duplicate to a few pivot tokens."""

    pivot_visual: int = 4
    pivot_text: int = 4

    placement = "layer_input"
    default_scope = "visual"
    default_start_layer = 2

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        keys = inputs.previous_keys().transpose(1, 2).flatten(2).float()
        key_l1 = keys.abs().sum(dim=-1)
        states = inputs.normed_hidden_states().float()
        keep = torch.zeros_like(inputs.eligible)
        for sample in range(keep.shape[0]):
            keep[sample] = self._keep_one(key_l1[sample], states[sample], inputs.eligible[sample], inputs.valid[sample], ratio)
        return keep

    def _keep_one(
        self, key_l1: torch.Tensor, states: torch.Tensor, eligible: torch.Tensor, valid: torch.Tensor, ratio: float
    ) -> torch.Tensor:
        """One sample: ``key_l1`` ``(T,)``, ``states`` ``(T, hidden)``, masks ``(T,)``; returns ``(T,)`` bool."""
        positions = torch.arange(eligible.shape[0], device=eligible.device)
        candidates = eligible.nonzero().flatten()
        after_last = valid & ~eligible & (positions > candidates.max())
        visual_pivots = top_positions(key_l1, eligible, self.pivot_visual)
        text_pivots = top_positions(key_l1, after_last, self.pivot_text)
        pivots = torch.cat([visual_pivots, text_pivots]).sort().values
        budget = int(candidates.numel() * (1.0 - ratio) / pivots.numel())
        kept = torch.zeros_like(eligible)
        kept[visual_pivots] = True
        pool = eligible & ~kept
        for pivot in pivots.tolist():
            pool_positions = pool.nonzero().flatten()
            take = min(budget, pool_positions.numel())
            if take == 0:
                break
            similarity = F.cosine_similarity(states[pivot][None], states[pool_positions], dim=-1)
            chosen = pool_positions[similarity.topk(take, largest=False).indices]
            kept[chosen] = True
            pool[chosen] = False
        return kept


def top_positions(values: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` largest ``values`` ``(T,)`` among ``candidates`` (fewer if there are fewer)."""
    positions = candidates.nonzero().flatten()
    top = values[positions].topk(min(count, positions.numel())).indices
    return positions[top]

"""DART (Wen et al., 2025, "Stop Looking for Important Tokens ... Duplication Matters More"),
with the rule of its official code (ZichenWen1/DART, ``Qwen2-VL/Qwen2VL_DART/modeling_qwen2_vl_self.py``,
commit ce7d5e2, ``get_retained_image_token`` at lines 401-445, called before layer ``K`` at 335-349).

Before layer ``K`` (the decision layer, default 2 for DART):

1. pivots: the ``pivot_visual`` eligible tokens and the ``pivot_text`` text tokens after the
   last eligible one (the question and chat tail) whose keys in layer ``K - 1`` (rotary
   applied, heads concatenated) have the largest L1 norm (lines 416-424, ``topk`` order);
2. per-pivot budget ``floor(N (1 - ρ) / P)`` for ``N`` eligible tokens and ``P`` pivots found
   (line 411 divides by ``pivot_visual + pivot_text``, the count found in the official setting,
   where at least ``pivot_text`` text tokens follow the image; fewer when they do not, e.g. a
   text prompt whose question is appended after the halted context, so that about
   ``(1 - ρ) N`` tokens are still kept);
3. for each pivot in turn, the budget's worth of remaining eligible tokens *least* cosine-similar
   to it (on the hidden states entering layer ``K`` through the final norm, lines 345 and 430-439)
   are kept and leave the shared pool (the visual pivots are never in it), so the order of the
   pivots changes the result;
4. kept: the visual pivots and every token chosen in 3; the other eligible tokens are dropped.

So ``min(N, pivot_visual + P · budget)`` eligible tokens are kept (never zero).

Pivot order: the official code walks ``list(set(image_indices + query_indices))`` (lines 425 and
430), the iteration order of a CPython set of the pivots' positions in the unpadded prompt, the
visual pivots inserted first, each group in ``topk`` order. :class:`DART` walks them in that order
(the same set built from the same integers, so the order is exactly reproduced; positions are
counted over the sample's valid tokens, so a padded or packed batch decides as each prompt
alone). ``"dart_prompt_order"`` (:class:`DARTPromptOrder`, ours, not the official rule) walks
them in prompt order. Ties in the similarity (which the official code breaks in set order) are
broken by ``topk``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dash_vl.methods.base import DecisionInputs, HaltingMethod, question_after_visual


@dataclass(frozen=True)
class DART(HaltingMethod):
    """Keep the eligible tokens least duplicate to a few pivot tokens."""

    pivot_visual: int = 4
    pivot_text: int = 4
    pivot_order: ClassVar[str] = "official"
    """``"official"``: the order of the official code's set of pivot positions; ``"prompt"``: prompt order."""

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
        candidates = eligible.nonzero().flatten()
        visual_pivots = top_positions(key_l1, eligible, self.pivot_visual)
        text_pivots = top_positions(key_l1, question_after_visual(eligible, valid), self.pivot_text)
        pivots = self._walk_order(visual_pivots, text_pivots, valid)
        budget = int(candidates.numel() * (1.0 - ratio) / len(pivots))
        kept = torch.zeros_like(eligible)
        kept[visual_pivots] = True
        pool = eligible & ~kept
        for pivot in pivots:
            pool_positions = pool.nonzero().flatten()
            take = min(budget, pool_positions.numel())
            if take == 0:
                break
            similarity = F.cosine_similarity(states[pivot][None], states[pool_positions], dim=-1)
            chosen = pool_positions[similarity.topk(take, largest=False).indices]
            kept[chosen] = True
            pool[chosen] = False
        return kept

    def _walk_order(self, visual_pivots: torch.Tensor, text_pivots: torch.Tensor, valid: torch.Tensor) -> list[int]:
        """The pivots' positions ``(T,)``-indexed, in the order their budgets are chosen (see the module)."""
        pivots = torch.cat([visual_pivots, text_pivots])
        if self.pivot_order == "prompt":
            return pivots.sort().values.tolist()
        unpadded = (valid.cumsum(0) - 1)[pivots].tolist()
        position_of = dict(zip(unpadded, pivots.tolist()))
        return [position_of[place] for place in list(set(unpadded))]


@dataclass(frozen=True)
class DARTPromptOrder(DART):
    """DART with the pivots walked in prompt order (ours; the official code walks a set's order)."""

    pivot_order: ClassVar[str] = "prompt"


def top_positions(values: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of the ``count`` largest ``values`` ``(T,)`` among ``candidates`` (fewer if there are fewer)."""
    positions = candidates.nonzero().flatten()
    top = values[positions].topk(min(count, positions.numel())).indices
    return positions[top]

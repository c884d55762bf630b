"""VisionZip (Yang et al., 2025, "VisionZip: Longer is Better but Not Necessary in Vision Language
Models"), with the rule of its official code, before the LLM.

Per unit (one tile of a tiled image, one image, or one video frame: one attention segment of
the vision encoder) of ``n`` visual tokens, ``M = round(n (1 - ρ))`` tokens are retained:

1. ``C = floor(10 M / 64)`` contextual and ``D = M - C`` dominant tokens (the official
   defaults 54 + 10 of 64, 108 + 20 of 128 and 162 + 30 of 192 all keep this split);
2. dominant: the ``D`` tokens with the highest encoder attention (see
   :mod:`dash_vl.vision_evidence`: ``[CLS]`` attention, or attention received where the
   encoder has no ``[CLS]``);
3. contextual: of the other ``R`` tokens in order, the targets are every ``max(1, R // C)``-th
   (the first ``C``); each remaining token joins the target whose metric (head-mean key) is the
   most cosine-similar; a target's features become ``target + mean(joined)`` (the official
   sum, not an average including the target).

Deviations, each forced by the families served here: the merge acts on the LLM's input
embeddings of the visual tokens (the projector output) rather than on the encoder states
before the projector, because the 2 x 2 merger / pixel shuffle / anyres packing / video pooling
of these families sit between the two; kept tokens stay in prompt order with their original
position ids (M-RoPE included) instead of dominant-then-contextual order; layout tokens without
a patch (LLaVA-OneVision's image newlines) are always dropped. The decision is made before
layer 0, so every LLM layer runs on the retained tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dash_vl.methods.base import Decision, DecisionInputs
from dash_vl.methods.pre_llm import BeforeLanguageModel, retained_count

CONTEXTUAL_PER_64 = 10


def unit_budget(ratio: float, tokens: int) -> tuple[int, int]:
    """``(dominant, contextual)`` retained of a unit of ``tokens`` visual tokens at ``ratio``.

    Raises:
        ValueError: if ``round(tokens (1 - ratio))`` is zero.
    """
    retained = retained_count(ratio, tokens, "a tile or frame")
    contextual = CONTEXTUAL_PER_64 * retained // 64
    return retained - contextual, contextual


@dataclass(frozen=True)
class VisionZip(BeforeLanguageModel):
    """Dominant plus contextual visual tokens per tile or frame, chosen and merged before the LLM."""

    needs_vision_evidence = True

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        return self.decide(inputs, ratio).kept

    def decide(self, inputs: DecisionInputs, ratio: float) -> Decision:
        score, metric, unit = inputs.vision_evidence()
        unit = torch.where(inputs.eligible, unit, -1)
        states = inputs.hidden_states.clone()
        kept = torch.zeros_like(inputs.eligible)
        for sample in range(unit.shape[0]):
            for number in unit[sample].unique().tolist():
                if number < 0:
                    continue
                positions = (unit[sample] == number).nonzero().flatten()
                dominant, targets, others, slot = self._plan(score[sample, positions], metric[sample, positions], ratio)
                kept[sample, positions[dominant]] = True
                kept[sample, positions[targets]] = True
                if others.numel():
                    unit_states = states[sample, positions]
                    states[sample, positions[targets]] += mean_by_slot(unit_states[others], slot, targets.numel())
        return Decision(kept=kept, states=states)

    @staticmethod
    def _plan(
        score: torch.Tensor, metric: torch.Tensor, ratio: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One unit: ``score`` ``(n,)``, ``metric`` ``(n, m)``. Returns unit indices of the dominant
        ``(D,)`` and target ``(C,)`` tokens, of the other tokens ``(R - C,)`` and the target slot
        ``(R - C,)`` each of them joins."""
        dominant_count, contextual_count = unit_budget(ratio, score.numel())
        order = score.float().argsort(descending=True, stable=True)
        dominant, rest = order[:dominant_count].sort().values, order[dominant_count:].sort().values
        if contextual_count == 0:
            return dominant, rest[:0], rest[:0], rest[:0]
        is_target = torch.zeros_like(rest, dtype=torch.bool)
        is_target[torch.arange(0, rest.numel(), max(1, rest.numel() // contextual_count))[:contextual_count]] = True
        targets, others = rest[is_target], rest[~is_target]
        directions = F.normalize(metric.float(), dim=-1)
        slot = (directions[others] @ directions[targets].T).argmax(dim=1)
        return dominant, targets, others, slot


def mean_by_slot(states: torch.Tensor, slot: torch.Tensor, slots: int) -> torch.Tensor:
    """``(slots, D)``: the mean of the rows of ``states`` ``(R, D)`` that join each slot (``slot`` ``(R,)``);
    zero for a slot nobody joins. Accumulated in float32, returned in ``states``' dtype."""
    sums = torch.zeros(slots, states.shape[1], dtype=torch.float32, device=states.device)
    sums.index_add_(0, slot, states.float())
    counts = torch.bincount(slot, minlength=slots).clamp(min=1)
    return (sums / counts[:, None]).to(states.dtype)

"""VisPruner (Zhang et al., ICCV 2025, "Beyond Text-Visual Attention: Exploiting Visual Cues for
Effective Token Pruning in VLMs"), with the rule of its official code, before the LLM.

The official code (Theia-4869/VisPruner, commit aefa01a) selects, per encoder image (per tile of
an anyres image), ``T`` of its ``N`` patch tokens before the projector
(``llava/model/llava_arch.py``, ``encode_images``, lines 141-187):

1. scores: the feature layer's attention from ``[CLS]`` to every patch, averaged over heads
   (``clip_encoder.py`` lines 37-43: ``attentions[select_layer][:, :, 0, 1:]``; line 154);
2. important: the ``T_imp = int(T r)`` patches of highest score (``important_ratio`` ``r`` = 0.5
   by default, lines 148-156; ``argsort`` descending), the rest stay in that order as the residual;
3. diverse: while the residual holds more than ``T_div = T - T_imp``: with ``r' = min(8, R - T_div)``
   for ``R`` residual tokens, split the residual into its even and odd places ``a`` and ``b``, score
   each ``a`` token by its largest cosine similarity to a ``b`` token (the features are the feature
   layer's patch states), drop the ``r'`` most similar ``a`` tokens and let the residual be the
   other ``a`` tokens (by descending similarity) followed by ``b`` (lines 158-176);
4. kept: the important and the residual tokens (lines 178-183); an anyres image's newline
   features are always kept (line 241).

Here ``T = round(n (1 - ρ))`` per unit of ``n`` visual tokens (a tile, an image or a video frame;
the official code takes ``T`` as a count, ``--visual_token_num``), sorting is stable, a residual
of odd length pairs its last even-place token like the others and a round may drop every ``a``
token (the official indexing fails on both, which its settings, 576 patches and ``T`` a multiple
of 4, never reach), and the
scores and features are taken where the families served here have them:

* scores: :mod:`dash_vl.engine.vision_evidence`'s dominance, the ``[CLS]`` attention summed over heads
  (the same order as the official mean) where the tower has a ``[CLS]`` (CLIP, InternViT); where it
  has none (SigLIP in LLaVA-OneVision, the Qwen2-VL / Qwen2.5-VL ViT) the attention each patch
  receives, averaged over heads and queries (the stand-in :mod:`dash_vl.engine.vision_evidence` uses for
  VisionZip on such towers); both averaged over
  the patches an LLM token merges (2 x 2 merger, pixel shuffle, anyres packing, video pooling);
* features: the LLM's input embeddings of the visual tokens (the projector outputs), not the
  patch states before the projector, because the merger / pixel shuffle / pooling of these
  families sit between the two (on a tower whose visual tokens are its patches, such as CLIP in
  LLaVA-1.5, this is the one difference from the official rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dash_vl.methods.base import DecisionInputs
from dash_vl.methods.pre_llm import BeforeLanguageModel, retained_count

DROPPED_PER_ROUND = 8


def important_and_diverse(scores: torch.Tensor, features: torch.Tensor, count: int, important_ratio: float) -> torch.Tensor:
    """``(count,)`` long, unit indices kept of one unit: ``scores`` ``(n,)``, ``features`` ``(n, D)``."""
    important_count = int(count * important_ratio)
    diverse_count = count - important_count
    order = scores.float().argsort(descending=True, stable=True)
    important, residual = order[:important_count], order[important_count:]
    if diverse_count == 0:
        return important
    directions = features.float() / features.float().norm(dim=-1, keepdim=True)
    while (dropped := min(DROPPED_PER_ROUND, residual.numel() - diverse_count)) > 0:
        evens, odds = residual[::2], residual[1::2]
        similarity = (directions[evens] @ directions[odds].T).max(dim=-1).values
        residual = torch.cat([evens[similarity.argsort(descending=True, stable=True)[dropped:]], odds])
    return torch.cat([important, residual])


@dataclass(frozen=True)
class VisPruner(BeforeLanguageModel):
    """Important visual tokens by encoder attention plus diverse ones by duplicate removal, per unit."""

    important_ratio: float = 0.5
    needs_vision_evidence = True

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        score, _, unit, _ = inputs.vision_evidence()
        unit = torch.where(inputs.eligible, unit, -1)
        kept = inputs.eligible & (unit < 0)  # layout tokens without a patch (newlines) stay
        for sample in range(unit.shape[0]):
            for number in unit[sample].unique().tolist():
                if number < 0:
                    continue
                positions = (unit[sample] == number).nonzero().flatten()
                count = retained_count(ratio, positions.numel(), "a tile or frame")
                picks = important_and_diverse(
                    score[sample, positions], inputs.hidden_states[sample, positions], count, self.important_ratio
                )
                kept[sample, positions[picks]] = True
        return kept

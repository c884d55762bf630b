"""DivPrune (Alvar et al., CVPR 2025, "DivPrune: Diversity-based Visual Token Pruning for Large
Multimodal Models"), with the rule of its official code, before the LLM.

The official code (vbdi/divprune, ``LLaVA/llava/model/llava_arch.py``, commit 799e2d9:
``DivPrune`` at lines 152-171, called at 366-385) runs on the LLM's input embeddings of the
image's visual tokens (the projector outputs, line 374), after the prompt is embedded:

1. ``M = int(round((1 - ρ) N))`` of the ``N`` visual tokens are kept (line 153, with the
   official ``SUBSET_RATIO`` = ``1 - ρ``; Python's rounding);
2. distances ``1 - cos`` between every pair of visual tokens (lines 147-150, 155: each row
   divided by its L2 norm, then a matrix product);
3. the first token kept is the one whose nearest other token is farthest (the second-smallest
   distance in its column, line 165, ``argmax`` line 169: the first index on ties);
4. each next one is the token whose distance to the nearest kept token is largest (lines 162,
   167 and 169): a greedy max-min (farthest-point) selection.

Here the minimum over the kept rows is carried from step to step (the same minimum, not
recomputed), and a kept token is never picked again (the official loop could re-pick one only
where every remaining token duplicates a kept one, keeping fewer than ``M``). The official code
takes the visual tokens of the prompt's first image as one set; here every visual token of the
prompt (all images, video frames, LLaVA-OneVision's newline tokens) forms the one set. The
matrix is computed in float32 (the official code: in the model's dtype). Model-agnostic: it
reads only the LLM's input embeddings, so it runs the same on every VL family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dash_vl.methods.base import DecisionInputs
from dash_vl.methods.pre_llm import PerPromptSelection


def cosine_distances(features: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` float32 ``1 - cos`` between the rows of ``features`` ``(n, D)``."""
    directions = features.float() / features.float().norm(dim=1, keepdim=True)
    return 1.0 - directions @ directions.T


def max_min_diverse(distances: torch.Tensor, count: int) -> torch.Tensor:
    """``(count,)`` long: greedy max-min picks over ``distances`` ``(n, n)``, in the order picked (all ``n``
    in order where ``count >= n``)."""
    if count >= distances.shape[0]:
        return torch.arange(distances.shape[0], device=distances.device)
    picks = torch.empty(count, dtype=torch.long, device=distances.device)
    picks[0] = distances.topk(2, dim=0, largest=False).values[1].argmax()
    nearest = distances[picks[0]].clone()
    nearest[picks[0]] = -torch.inf
    for step in range(1, count):
        picks[step] = nearest.argmax()
        nearest = torch.minimum(nearest, distances[picks[step]])
        nearest[picks[step]] = -torch.inf
    return picks


@dataclass(frozen=True)
class DivPrune(PerPromptSelection):
    """Keep the most diverse visual tokens of each prompt (greedy max-min cosine distance)."""

    def select(self, inputs: DecisionInputs, sample: int, positions: torch.Tensor, count: int) -> torch.Tensor:
        return max_min_diverse(cosine_distances(inputs.hidden_states[sample, positions]), count)

"""VisPruner (Zhang et al., ICCV 2025, "Beyond Text-Visual Attention: Exploiting Visual Cues for
Effective Token Pruning in VLMs"), with the rule of its official code, before the LLM.

The official code (Theia-4869/VisPruner, commit aefa01a) selects, per encoder tile (an image, or
the base view and each anyres crop of one), ``T`` of its ``N`` patch tokens before the projector
(``llava/model/llava_arch.py``, ``encode_images``, lines 141-186):

1. scores: the feature layer's attention from ``[CLS]`` to every patch, averaged over heads
   (``clip_encoder.py`` lines 37-43: ``attentions[select_layer][:, :, 0, 1:]``; ``llava_arch.py`` line 154);
2. features: the feature layer's patch states ``hidden_states[select_layer][:, 1:]`` (``clip_encoder.py``
   lines 37 and 41), before the projector (applied after the selection, line 185), L2-normalised
   for the cosine similarity only (line 160);
3. important: the ``T_imp = int(T r)`` patches of highest score (``important_ratio`` ``r`` = 0.5
   by default, lines 148-156; ``argsort`` descending), the rest stay in that order as the residual;
4. diverse: while the residual holds more than ``T_div = T - T_imp``: with ``r' = min(8, R - T_div)``
   for ``R`` residual tokens, split the residual into its even and odd places ``a`` and ``b``, score
   each ``a`` token by its largest cosine similarity to a ``b`` token, drop the ``r'`` most similar
   ``a`` tokens and let the residual be the other ``a`` tokens (by descending similarity) followed by
   ``b`` (lines 161-176);
5. kept: the important and the residual patches, in patch order (the index mask, lines 178-183);
6. layout: LLaVA-1.5 (``flat``) sends an image's kept patches in patch order (lines 209-212);
   LLaVA-NeXT's ``spatial_unpad`` loses its ``_unpad`` at line 207, so the ``spatial`` branch runs
   (lines 245-252): the base view's kept patches, then the crops' kept patches in raster order over
   the whole crop grid, with no unpadding and no image newline.

Here ``T = round(n (1 - ρ))`` per tile of ``n`` patches (the official code takes ``T`` as a count,
``--visual_token_num``), sorting is stable, a residual of odd length pairs its last even-place
token like the others and a round may drop every ``a`` token (the official indexing fails on both,
which its settings, 576 patches and ``T`` a multiple of 4, never reach).

Cost: step 4 runs ``ceil((R - T_div) / 8)`` rounds, each a similarity product over the residual. For the
official 576 patches that is at most 72 rounds; over one unit of many tokens it dominates: on a 16k-token
Qwen2-VL image at ρ = 0.9 it runs about 1 800 rounds, and VisPruner's time to first token was 8.96 s against
the unmodified model's 2.67 s on an H100 (``eval/results/generate_compiled_qwen2vl7b.md``).

On LLaVA-1.5 and LLaVA-NeXT (CLIP towers with ``[CLS]`` whose patch states go straight to the
projector) the rule runs exactly so, inside the image feature call (:meth:`VisPruner.select_before_projector`):
an image's kept tokens, projected, fill its first placeholders in the official layout and the
others are dropped; kept tokens keep those placeholders' position ids, so the text after an image
sits further from it than in the official code, which shortens the sequence.

Elsewhere the scores and features are taken where those families have them, per unit of ``n``
LLM visual tokens (a tile, an image or a video frame):

* scores: :mod:`dash_vl.engine.vision_evidence`'s dominance at the feature layer, the ``[CLS]``
  attention summed over heads where the tower has a ``[CLS]`` (InternViT); where it has none
  (SigLIP in LLaVA-OneVision, the Qwen2-VL / Qwen2.5-VL ViT) the attention each patch receives,
  averaged over heads and queries (the official SigLIP tower, ``siglip_encoder.py`` lines 36-39,
  averages the *last* layer's attention over queries instead); both averaged over the patches an
  LLM token merges (2 x 2 merger, pixel shuffle, anyres packing, video pooling);
* features: the LLM's input embeddings of the visual tokens (the projector outputs), because the
  merger / pixel shuffle / pooling of these families sit between the patch states and the LLM;
* layout: kept tokens stay in their own placeholders, in prompt order; layout tokens without a
  patch (LLaVA-OneVision's image newlines) are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dash_vl.methods.base import DecisionInputs
from dash_vl.methods.pre_llm import BeforeLanguageModel, crop_grid_order, retained_count

if TYPE_CHECKING:
    from dash_vl.engine.encoder_evidence import PatchesToProjector, VisualEvidence

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
    """Important visual tokens by encoder attention plus diverse ones by duplicate removal, per tile or unit."""

    important_ratio: float = 0.5
    needs_vision_evidence = True
    selects_before_projector = True

    def select_before_projector(
        self, adapter: PatchesToProjector, output: Any, patches: torch.Tensor, arguments: dict[str, Any], ratio: float
    ) -> tuple[VisualEvidence, Any]:
        """Every tile's kept patch states (:func:`important_and_diverse` on its ``[CLS]`` attention and patch
        states) through the projector, an image's in the official layout (module docstring, step 6)."""
        states = adapter.tile_states(output)[:, 1:]
        tiles, length, width = states.shape
        scores = patches[:, 0].view(tiles, length)
        count = retained_count(ratio, length, "a tile")
        kept = torch.stack([
            important_and_diverse(scores[tile], states[tile], count, self.important_ratio).sort().values
            for tile in range(tiles)
        ])
        tokens = adapter.project(states.gather(1, kept[..., None].expand(-1, -1, width)))
        images = []
        counts = adapter.tile_counts(arguments)
        for image, (image_tokens, image_kept) in enumerate(zip(tokens.split(counts), kept.split(counts))):
            columns = adapter.crop_columns(image, arguments)
            crops = image_tokens[1:].flatten(0, 1)
            if columns is not None:
                crops = crops[crop_grid_order(image_kept[1:], columns, adapter.tile_side)]
            images.append(torch.cat([image_tokens[0], crops]))
        return adapter.place_before_projector(output, images, "VisPruner")

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        score, _, unit, selected = inputs.vision_evidence()
        unit = torch.where(inputs.eligible, unit, -1)
        # a prompt whose images the feature call decided (every image, at least one token each) keeps those;
        # elsewhere layout tokens without a patch (newlines) stay
        decided = selected.any(dim=1, keepdim=True)
        kept = inputs.eligible & torch.where(decided, selected, unit < 0)
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

"""VisionZip (Yang et al., 2025, "VisionZip: Longer is Better but Not Necessary in Vision Language
Models"), with the rule of its official code, before the LLM.

Per unit (one tile of a tiled image, one image, or one video frame: one attention segment of
the vision encoder) of ``n`` visual tokens, ``M = round(n (1 - ρ))`` tokens are retained:

1. ``C = floor(10 M / 64)`` contextual and ``D = M - C`` dominant tokens (the official
   defaults 54 + 10 of 64, 108 + 20 of 128 and 162 + 30 of 192 all keep this split);
2. dominant: the ``D`` tokens with the highest encoder attention (see
   :mod:`dash_vl.engine.vision_evidence`: ``[CLS]`` attention, or attention received where the
   encoder has no ``[CLS]``);
3. contextual: of the other ``R`` tokens in order, the targets are every ``max(1, R // C)``-th
   (the first ``C``); each remaining token joins the target whose metric (head-mean key) is the
   most cosine-similar; a target's features become ``target + mean(joined)`` (the official
   sum, not an average including the target).

On LLaVA-1.5 and LLaVA-NeXT (CLIP towers with ``[CLS]`` whose patch states go straight to the
projector) the official rule runs as published, before the projector, on every encoder tile
(:func:`official_tile_tokens`, called from the image feature function): ``[CLS]`` counts as one
of the ``D`` dominant tokens (VisionZip's ``main.py`` passes ``dominant - 1`` to the encoder), the
merge acts on the encoder states, and each tile yields ``M`` tokens, ``[CLS]``, the dominant patches
in patch order, then the contextual tokens. An image's tokens fill the first of its placeholders
in the official layout, the others are dropped: on LLaVA-1.5 its one tile's tokens; on LLaVA-NeXT
the layout of ``visionzip/llava_arch.py`` (:func:`official_anyres_layout`), with no unpadding and
no image newlines between the crops.

Elsewhere, deviations forced by the families' layouts: the merge acts on the LLM's input
embeddings of the visual tokens (the projector output) rather than on the encoder states
before the projector, because the 2 x 2 merger / pixel shuffle / anyres packing / video pooling
of these families sit between the two; kept tokens stay in prompt order with their original
position ids (M-RoPE included) instead of dominant-then-contextual order; layout tokens without
a patch (LLaVA-OneVision's image newlines) are always dropped. In every family kept tokens keep
their original position ids (on LLaVA-1.5 and LLaVA-NeXT the text after an image therefore sits
further from it than in the official code, which shortens the sequence). The decision is made
before layer 0, so every LLM layer runs on the retained tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from dash_vl.methods.base import Decision, DecisionInputs
from dash_vl.methods.pre_llm import BeforeLanguageModel, crop_grid_order, retained_count

if TYPE_CHECKING:
    from dash_vl.engine.encoder_evidence import PatchesToProjector, VisualEvidence

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
    selects_before_projector = True

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        return self.decide(inputs, ratio).kept

    def select_before_projector(
        self, adapter: PatchesToProjector, output: Any, patches: torch.Tensor, arguments: dict[str, Any], ratio: float
    ) -> tuple[VisualEvidence, Any]:
        """The official tokens of every tile (:func:`official_tile_tokens`) through the projector, an image's
        in the official layout (its one tile's; :func:`official_anyres_layout` on LLaVA-NeXT)."""
        states = adapter.tile_states(output)
        tiles, length = states.shape[0], states.shape[1] - 1
        patches = patches.view(tiles, length, -1)
        per_tile = [official_tile_tokens(states[t], patches[t, :, 0], patches[t, :, 1:], ratio) for t in range(tiles)]
        tokens = adapter.project(torch.stack([official for official, _ in per_tile]))
        dominant = torch.stack([indices for _, indices in per_tile])
        images = []
        counts = adapter.tile_counts(arguments)
        for image, (image_tokens, image_dominant) in enumerate(zip(tokens.split(counts), dominant.split(counts))):
            columns = adapter.crop_columns(image, arguments)
            if columns is None:
                images.append(image_tokens[0])
            else:
                images.append(official_anyres_layout(image_tokens, image_dominant, columns, adapter.tile_side))
        return adapter.place_before_projector(output, images, "VisionZip")

    def decide(self, inputs: DecisionInputs, ratio: float) -> Decision:
        score, metric, unit, selected = inputs.vision_evidence()
        unit = torch.where(inputs.eligible, unit, -1)
        states = inputs.hidden_states.clone()
        kept = inputs.eligible & selected  # tokens the encoder already selected and merged (LLaVA-1.5)
        for sample in range(unit.shape[0]):
            for number in unit[sample].unique().tolist():
                if number < 0:
                    continue
                positions = (unit[sample] == number).nonzero().flatten()
                dominant, targets, others, slot = plan_unit(
                    score[sample, positions], metric[sample, positions], *unit_budget(ratio, positions.numel())
                )
                kept[sample, positions[dominant]] = True
                kept[sample, positions[targets]] = True
                if others.numel():
                    unit_states = states[sample, positions]
                    states[sample, positions[targets]] += mean_by_slot(unit_states[others], slot, targets.numel())
        return Decision(kept=kept, states=states)


def plan_unit(
    score: torch.Tensor, metric: torch.Tensor, dominant_count: int, contextual_count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One unit: ``score`` ``(n,)``, ``metric`` ``(n, m)``. Returns unit indices of the ``dominant_count``
    dominant ``(D,)`` and ``contextual_count`` target ``(C,)`` tokens, of the other tokens ``(R - C,)``
    and the target slot ``(R - C,)`` each of them joins."""
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


def official_tile_tokens(
    states: torch.Tensor, score: torch.Tensor, metric: torch.Tensor, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's official rule on one tile's encoder states, before the projector (CLIP with ``[CLS]``).

    Follows ``visionzip/clip_encoder.py`` (``CLIPVisionTower_VisionZip.forward``, lines 43-83) with
    the budget of ``visionzip/main.py`` line 7 (``[CLS]`` is one of the dominant tokens): the
    ``D - 1`` patches with the highest ``[CLS]`` attention and ``[CLS]`` itself, in patch order;
    of the other ``R`` patches every ``max(1, R // C)``-th is a target (the first ``C``), each
    remaining patch joins its most cosine-similar target, and a target becomes ``target +
    mean(joined)``.

    Args:
        states: ``(1 + n, width)``, the feature layer's output, ``[CLS]`` first.
        score: ``(n,)``, the ``[CLS]`` attention each patch gets at that layer, summed over heads.
        metric: ``(n, m)``, each patch's key at that layer, averaged over heads.
        ratio: ρ; ``M = round(n (1 - ρ))`` tokens are returned (see :func:`unit_budget`).

    Returns:
        ``(M, width)`` in ``states``' dtype: ``[CLS]``, the ``D - 1`` dominant patches, the ``C``
        contextual tokens; and the dominant patches' indices ``(D - 1,)`` ascending (``[CLS]`` not counted).
    """
    dominant_count, contextual_count = unit_budget(ratio, score.numel())
    patches = states[1:]
    dominant, targets, others, slot = plan_unit(score, metric, dominant_count - 1, contextual_count)
    contextual = patches[targets] + mean_by_slot(patches[others], slot, targets.numel())
    return torch.cat([states[:1], patches[dominant], contextual]), dominant


def official_anyres_layout(tokens: torch.Tensor, dominant: torch.Tensor, columns: int, side: int) -> torch.Tensor:
    """One anyres image's tokens in the order of VisionZip's LLaVA-NeXT code
    (``visionzip/llava_arch.py``, ``prepare_inputs_labels_for_multimodal_visionzip`` lines 107-121 and
    ``restore_image_features_sorted`` lines 42-80): the base view's ``M`` tokens as the encoder gave
    them; then every crop's dominant patches in raster order over the whole crop grid (lines 49-75;
    no unpadding and no newline, the official function builds the newline but never uses it, lines
    66-67); then each crop's ``[CLS]`` token (line 77); then each crop's contextual tokens, crop after
    crop (line 76).

    Args:
        tokens: ``(tiles, M, hidden)``, the base view's then the crops' tokens (:func:`official_tile_tokens`'s
            order), crops in row-major grid order.
        dominant: ``(tiles, D - 1)`` long, each tile's dominant patch indices, ascending.
        columns: crops per grid row.
        side: patches along a tile's side.

    Returns:
        ``(M tiles, hidden)``.
    """
    crops, kept = tokens[1:], dominant.shape[1]
    dominant_tokens = crops[:, 1 : 1 + kept].flatten(0, 1)[crop_grid_order(dominant[1:], columns, side)]
    return torch.cat([tokens[0], dominant_tokens, crops[:, 0], crops[:, 1 + kept :].flatten(0, 1)])


def mean_by_slot(states: torch.Tensor, slot: torch.Tensor, slots: int) -> torch.Tensor:
    """``(slots, D)``: the mean of the rows of ``states`` ``(R, D)`` that join each slot (``slot`` ``(R,)``);
    zero for a slot nobody joins. Accumulated in float32, returned in ``states``' dtype."""
    sums = torch.zeros(slots, states.shape[1], dtype=torch.float32, device=states.device)
    sums.index_add_(0, slot, states.float())
    counts = torch.bincount(slot, minlength=slots).clamp(min=1)
    return (sums / counts[:, None]).to(states.dtype)

"""VisPruner, DivPrune and CDPruner, the pre-LLM baselines: on every VL family the engine keeps the
visual tokens that a literal re-reading of each official code keeps (one unpadded prompt, as the
official code runs), its prefill logits and 16 decode steps equal the masking reference over them;
a padded or packed batch decides as each prompt alone; text-only models are refused. VisPruner's
selection equals its official code on a tiny CLIP tower with ``[CLS]``, and on LLaVA-1.5 and
LLaVA-NeXT the whole model runs the official code's tokens in its layout."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from dash_vl import Halting
from dash_vl.hf_compat import anyres_grid_shape
from dash_vl.methods.vispruner import important_and_diverse
from tests.conftest import FAMILY_NAMES, model_of, processor_of, vl_inputs
from tests.engine.test_packed import TEXT_FAMILIES, text_model
from tests.methods.test_methods import check_against
from tests.methods.test_visionzip import (
    CLIP_FAMILIES,
    assert_visionzip_runs_like_reference,
    encoder_evidence,
    token_evidence,
)
from tests.methods.test_visionzip_clip import FeatureLayerRecorder, encoder_tiles, placed_in_first_placeholders
from tests.reference import MaskingReference, capture_language_model_inputs, eligible_tokens

PRE_LLM_METHODS = ("vispruner", "divprune", "cdpruner")
RATIO = 0.5


# --- literal re-readings of the official code, one unpadded prompt -----------------------------


def divprune_official(visual: torch.Tensor, keep_ratio: float) -> list[int]:
    """vbdi/divprune ``LLaVA/llava/model/llava_arch.py`` lines 147-171 as written: ``visual`` ``(N, D)``."""
    threshold_terms = int(round(keep_ratio * visual.shape[0]))
    norm_matrix = visual / visual.norm(dim=1, keepdim=True)
    cosine_matrix = 1.0 - torch.mm(norm_matrix, norm_matrix.t())
    s = torch.empty(threshold_terms, dtype=torch.long)
    for i in range(threshold_terms):
        m2 = cosine_matrix if i == 0 else torch.index_select(cosine_matrix, 0, torch.index_select(s, 0, torch.arange(0, i)))
        scores = torch.topk(m2, 2, dim=0, largest=False).values[1, :] if i == 0 else torch.min(m2, dim=0).values
        s[i] = torch.argmax(scores)
    return s.tolist()


def cdpruner_official(visual: torch.Tensor, text: torch.Tensor, visual_token_num: int) -> list[int]:
    """Theia-4869/CDPruner ``llava/model/llava_arch.py`` lines 148-185 as written (B = 1), with the
    relevance's two sides the LLM input embeddings: ``visual`` ``(N, D)``, ``text`` ``(M, D)``."""
    image_features = visual[None]
    B, N, _ = image_features.shape
    image_normalized = (image_features / image_features.norm(dim=-1, keepdim=True)).float()
    similarity = torch.matmul(image_normalized, image_normalized.transpose(1, 2))
    image_embeds = image_features / image_features.norm(dim=-1, keepdim=True)
    text_embeds = text / text.norm(dim=-1, keepdim=True)
    relevance = torch.matmul(image_embeds, text_embeds.t())
    relevance = (-relevance).mean(dim=-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
    cis = torch.zeros((visual_token_num, B, N))
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    select_idx = torch.empty((visual_token_num, B), dtype=torch.long)
    for i in range(visual_token_num):
        j = torch.argmax(di2s, dim=-1)
        select_idx[i] = j
        eis = (kernel[torch.arange(B), j] - torch.einsum("tb,tbn->bn", cis[:i, torch.arange(B), j], cis[:i])) / torch.sqrt(
            di2s[torch.arange(B), j]
        ).unsqueeze(-1)
        cis[i, :, :] = eis
        di2s -= torch.square(eis)
        di2s[torch.arange(B), j] = -float("inf")
    return select_idx[:, 0].tolist()


def vispruner_official(scores: list[float], features: torch.Tensor, keep: int, important_ratio: float = 0.5) -> list[int]:
    """Theia-4869/VisPruner ``llava/model/llava_arch.py`` lines 148-183, written out with Python lists
    (so that the small units of the tiny models, where the official indexing would fail, follow the
    same steps): unit indices kept of ``scores`` ``(n,)`` and ``features`` ``(n, D)``."""
    important_count = int(keep * important_ratio)
    diverse_count = keep - important_count
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    important, residual = order[:important_count], order[important_count:]
    while diverse_count > 0:
        dropped = min(8, len(residual) - diverse_count)
        if dropped <= 0:
            break
        evens, odds = residual[::2], residual[1::2]
        most_similar = [max(float(torch.cosine_similarity(features[a], features[b], dim=0)) for b in odds) for a in evens]
        ranked = sorted(range(len(evens)), key=lambda i: (-most_similar[i], i))
        residual = [evens[i] for i in ranked[dropped:]] + odds
    return important + (residual if diverse_count > 0 else [])


def official_kept(method: str, model, family: str, inputs: dict) -> torch.Tensor:
    """``(1, T)`` bool: the non-visual tokens and the visual ones the official rule keeps."""
    embeds = capture_language_model_inputs(model, inputs).embeds[0]
    visual_mask = eligible_tokens(model, inputs, "visual", "halted")
    visual = visual_mask[0].nonzero().flatten().tolist()
    kept = inputs["attention_mask"].bool() & ~visual_mask
    if method == "divprune":
        picks = [visual[i] for i in divprune_official(embeds[visual], 1 - RATIO)]
    elif method == "cdpruner":
        text = [t for t in range(max(visual) + 1, embeds.shape[0])]
        picks = [visual[i] for i in cdpruner_official(embeds[visual], embeds[text], round(len(visual) * (1 - RATIO)))]
    else:
        scores, metrics = encoder_evidence(model, family, inputs)
        evidence = token_evidence(model, family, "image", scores, metrics, inputs)
        units: dict[int, list[tuple[int, float]]] = {}
        picks = []
        for t, (score, _, unit) in zip(visual, evidence):
            if unit < 0:
                picks.append(t)  # a newline feature: always kept
            else:
                units.setdefault(unit, []).append((t, score))
        for members in units.values():
            positions = [t for t, _ in members]
            chosen = vispruner_official([s for _, s in members], embeds[positions], round(len(members) * (1 - RATIO)))
            picks += [positions[i] for i in chosen]
    kept[0, picks] = True
    return kept


def vispruner_official_layout(model, inputs: dict, ratio: float) -> list[torch.Tensor]:
    """Per image, the LLM input tokens of Theia-4869/VisPruner's ``llava/model/llava_arch.py`` as written:
    ``encode_images`` (lines 141-186) on every tile, with the ``[CLS]`` attention of ``attentions[-2]``
    averaged over heads and the patch states ``hidden_states[-2][:, 1:]`` (``clip_encoder.py`` lines
    37-43), the selection through :func:`vispruner_official`, the projector after it; then the layout:
    ``flat`` for LLaVA-1.5 (lines 209-212), the ``spatial`` branch for LLaVA-NeXT (line 207 strips
    ``_unpad``; lines 213-224 and 245-252)."""
    pixels, counts = encoder_tiles(model, inputs)
    attentions, hidden_states, _ = FeatureLayerRecorder(model)(pixels)
    image_features, image_attentions = hidden_states[:, 1:], attentions[:, :, 0, 1:].mean(dim=1)
    B, N, _ = image_features.shape
    visual_token_num = round(N * (1 - RATIO))
    index_masks = torch.zeros(B, N, dtype=torch.bool)
    for tile in range(B):
        index_masks[tile, vispruner_official(image_attentions[tile].tolist(), image_features[tile], visual_token_num)] = True
    with torch.no_grad():
        image_features = model.model.multi_modal_projector(image_features)
    image_features, index_masks = torch.split(image_features, counts), torch.split(index_masks, counts)
    if "image_sizes" not in inputs:  # flat
        return [x.flatten(0, 1)[m.flatten(0, 1)] for x, m in zip(image_features, index_masks)]
    config, images = model.config, []
    height = width = config.vision_config.image_size // config.vision_config.patch_size
    for image_idx, (image_feature, index_mask) in enumerate(zip(image_features, index_masks)):
        base_image_feature, base_index_mask = image_feature[0], index_mask[0]
        image_feature, index_mask = image_feature[1:], index_mask[1:]
        num_patch_height, num_patch_width = anyres_grid_shape(
            inputs["image_sizes"][image_idx], config.image_grid_pinpoints, config.vision_config.image_size
        )
        image_feature = image_feature.view(num_patch_height, num_patch_width, height, width, -1)
        index_mask = index_mask.view(num_patch_height, num_patch_width, height, width)
        image_feature = image_feature.permute(0, 2, 1, 3, 4).contiguous().flatten(0, 3)
        index_mask = index_mask.permute(0, 2, 1, 3).contiguous().flatten(0, 3)
        images.append(torch.cat((base_image_feature[base_index_mask], image_feature[index_mask]), dim=0))
    return images


@pytest.mark.parametrize("family,kind", [
    ("llava", "image"), ("llava_next", "image"), pytest.param("llava_next", "multi_image", marks=pytest.mark.slow),
])
def test_vispruner_on_clip_towers_equals_the_official_code_through_the_model(family, kind):
    """Two left-padded prompts: the engine keeps each image's first placeholders, which carry the official
    code's tokens in its layout, and runs like the masking reference fed them (prefill and 16 decode steps)."""
    model, inputs = model_of(family, "sdpa"), vl_inputs(processor_of(family), 2, kind)
    lm_inputs = capture_language_model_inputs(model, inputs)
    kept, merged = placed_in_first_placeholders(model, inputs, lm_inputs.embeds, vispruner_official_layout(model, inputs, RATIO))
    report = assert_visionzip_runs_like_reference(model, inputs, lm_inputs, kept, merged, RATIO, method="vispruner")
    assert report.kept_positions == [row.nonzero().flatten().tolist() for row in kept]


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("method", PRE_LLM_METHODS)
def test_pre_llm_method_matches_official_rule(method, family):
    if method == "vispruner" and family in CLIP_FAMILIES:
        pytest.skip("VisPruner on CLIP towers runs before the projector: test_vispruner_on_clip_towers_...")
    model, inputs = model_of(family, "sdpa"), vl_inputs(processor_of(family), 1, "image")
    kept = official_kept(method, model, family, inputs)
    assert int(kept.sum()) < int(inputs["attention_mask"].sum())
    reference = MaskingReference(model, RATIO, 0, kept, given_active=kept)
    check_against(reference, model, inputs, method=method, ratio=RATIO)


@pytest.mark.parametrize("keep", [16, 32, 48])
def test_vispruner_selection_equals_official_code_on_a_clip_tower(keep):
    """A tiny CLIP ViT (64 patches and [CLS]): ``encode_images`` of the official code on its
    penultimate layer (the LLaVA ``select_layer`` -2), against :func:`important_and_diverse` given
    the [CLS] attention summed over heads, as :mod:`dash_vl.engine.vision_evidence` records it."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        image_size=64, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
    )
    config._attn_implementation = "eager"
    tower = CLIPVisionModel(config).eval()
    with torch.no_grad():
        outputs = tower(torch.randn(1, 3, 64, 64), output_hidden_states=True, output_attentions=True)
    image_features, image_attentions = outputs.hidden_states[-2][:, 1:], outputs.attentions[-2][:, :, 0, 1:]
    B, N, _ = image_features.shape
    important_token_num = int(keep * 0.5)
    diverse_token_num = keep - important_token_num
    token_indices = image_attentions.mean(dim=1).argsort(dim=-1, descending=True)
    important_indices, residual_indices = token_indices[:, :important_token_num], token_indices[:, important_token_num:]
    image_normalized = image_features / image_features.norm(dim=-1, keepdim=True)
    while diverse_token_num > 0:
        R = residual_indices.shape[1]
        r = min(8, R - diverse_token_num)
        if r <= 0:
            break
        residual_tokens = image_normalized[torch.arange(B).unsqueeze(-1).expand(-1, R), residual_indices]
        a, b = residual_tokens[..., ::2, :], residual_tokens[..., 1::2, :]
        scores = (a @ b.transpose(-1, -2)).max(dim=-1).values
        distinct_indices = scores.argsort(dim=-1, descending=True)[:, r:]
        residual_indices = torch.cat([
            residual_indices[..., ::2][torch.arange(B).unsqueeze(-1).expand(-1, R // 2 - r), distinct_indices],
            residual_indices[..., 1::2],
        ], dim=-1)
    index_masks = torch.zeros(B, N, dtype=torch.bool)
    index_masks.scatter_(1, torch.cat([important_indices, residual_indices], dim=-1), True)

    picks = important_and_diverse(image_attentions.sum(dim=1)[0], image_features[0], keep, 0.5)
    assert sorted(picks.tolist()) == index_masks[0].nonzero().flatten().tolist()
    assert picks.numel() == keep


# --- batches, packing, refusals -----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.parametrize("packing", ["off", "always"])
@pytest.mark.parametrize("method", PRE_LLM_METHODS + ("dart",))
def test_padded_and_packed_batches_decide_as_each_prompt_alone(method, packing):
    """A left-padded pair of image prompts in one batch keeps, per prompt, the positions (counted from its
    first valid token) it keeps alone, and its prefill logits on valid tokens equal those alone."""
    model, processor = model_of("qwen2_vl", "sdpa"), processor_of("qwen2_vl")
    batch = vl_inputs(processor, 2, "image")
    with Halting(model, method=method, ratio=RATIO, packing=packing) as halting, torch.no_grad():
        logits = model(**batch).logits
        report = halting.last_report
        for sample, valid in enumerate(batch["attention_mask"].bool()):
            alone = model(**vl_inputs(processor, 1, "image", first=sample)).logits[0]
            padding = int((~valid).sum())
            assert [t - padding for t in report.kept_positions[sample]] == halting.last_report.kept_positions[0]
            torch.testing.assert_close(logits[sample, valid], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", PRE_LLM_METHODS)
def test_pre_llm_methods_refuse_text_only_models(method):
    model = text_model(TEXT_FAMILIES[0])
    with pytest.raises(ValueError, match="scope='visual' needs a model with visual tokens"):
        Halting(model, method=method, ratio=RATIO)


@pytest.mark.parametrize("method", PRE_LLM_METHODS)
def test_pre_llm_methods_decide_before_the_llm_on_visual_tokens_only(method):
    model = model_of("internvl", "sdpa")
    with pytest.raises(ValueError, match="start_layer must be 0"):
        Halting(model, method=method, ratio=RATIO, start_layer=2)
    with pytest.raises(ValueError, match="scope must be 'visual'"):
        Halting(model, method=method, ratio=RATIO, scope="all")


@pytest.mark.parametrize("method", ["divprune", "cdpruner"])
def test_budget_that_rounds_to_zero_is_a_clear_error(method):
    model, inputs = model_of("qwen2_vl", "sdpa"), vl_inputs(processor_of("qwen2_vl"), 1, "video")  # 8 visual tokens
    with Halting(model, method=method, ratio=0.95), pytest.raises(ValueError, match="retains round"):
        model(**inputs)

"""VisionZip on LLaVA-1.5 and LLaVA-NeXT (CLIP towers with ``[CLS]``) equals a line-by-line re-reading
of the official code (dvlab-research/VisionZip at 3151f6d, ``visionzip/clip_encoder.py``
``CLIPVisionTower_VisionZip.forward`` lines 43-83, with the budget of ``visionzip/main.py`` line 7
and the key metric of ``visionzip/utils.py`` ``CLIPAttention_forward`` lines 23-24 and 89; for
LLaVA-NeXT the anyres layout of ``visionzip/llava_arch.py`` lines 42-80 and 107-128): first the rule
alone on random encoder tensors, then the whole tiny model, whose language model must see each
image's official tokens through the projector, in the official order, in its first placeholders."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from dash_vl.hf_compat import anyres_grid_shape, anyres_tile_count
from dash_vl.methods.visionzip import official_tile_tokens, unit_budget
from tests.conftest import model_of, processor_of, vl_inputs
from tests.methods.test_visionzip import assert_visionzip_runs_like_reference
from tests.reference import capture_language_model_inputs


def official_visionzip(
    attn_weights: torch.Tensor, hidden_states: torch.Tensor, metric: torch.Tensor, dominant: int, contextual: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The official tokens ``(B, dominant + contextual, D)`` of a batch of images and their ``all_indices``
    ``(B, dominant)`` (``[CLS]`` then the dominant patches + 1), as the official code computes them, step
    by step (the line numbers are ``clip_encoder.py``'s).

    Args:
        attn_weights: ``(B, heads, 1 + n, 1 + n)``, the softmaxed attention of ``layers[-2]`` (line 43).
        hidden_states: ``(B, 1 + n, D)``, ``hidden_states[-2]`` (line 44).
        metric: ``(B, 1 + n, head_dim)``, that layer's keys averaged over heads (line 45).
        dominant, contextual: the user's ``visionzip(model, dominant, contextual)``; the encoder gets
            ``dominant - 1`` (``main.py`` line 7), ``[CLS]`` fills the last dominant place.
    """
    dominant_num, contextual_num = dominant - 1, contextual
    batch, length, width = hidden_states.shape
    # lines 50-54: [CLS] attention to the patches, summed over heads; top dominant_num patches (+1 for [CLS])
    cls_attention_sum = attn_weights[:, :, 0, 1:].sum(dim=1)
    topk_indices = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros(batch, 1, dtype=topk_indices.dtype), topk_indices], dim=1)
    # lines 56-57: a mask True on the tokens left over; masked_select keeps sequence order
    mask = torch.ones(batch, length, dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden_states.masked_select(~mask.unsqueeze(-1)).view(batch, dominant_num + 1, width)
    # lines 60-64: the leftover tokens and their normalised keys
    metric_filtered = metric[mask].view(batch, length - (dominant_num + 1), metric.shape[2])
    hidden_filtered = hidden_states.masked_select(mask.unsqueeze(-1)).view(batch, length - (dominant_num + 1), width)
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    # lines 67-71: every step-th leftover token is a target, the others are merged into them
    rest = metric_normalized.shape[1]
    step = max(1, rest // contextual_num)
    target_indices = torch.arange(0, rest, step)[:contextual_num]
    is_other = ~torch.isin(torch.arange(rest), target_indices)
    tokens_to_merge = metric_normalized[:, is_other, :]
    # lines 72-77: one-hot assignment to the most similar target, then the mean of each target's group
    similarity = torch.bmm(tokens_to_merge, metric_normalized[:, target_indices, :].transpose(1, 2))
    assign_one_hot = torch.zeros(batch, tokens_to_merge.shape[1], contextual_num, dtype=hidden_filtered.dtype)
    assign_one_hot.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated_hidden = torch.bmm(assign_one_hot.transpose(1, 2), hidden_filtered[:, is_other, :]) / counts
    # lines 78-83: target + mean(group), after the dominant tokens
    contextual_tokens = hidden_filtered[:, target_indices, :] + aggregated_hidden
    return torch.cat([dominant_tokens, contextual_tokens], dim=1), all_indices


def restore_image_features_sorted(image_feature: torch.Tensor, cur_keep_idx: torch.Tensor, width: int, height: int,
                                  side: int) -> torch.Tensor:
    """``visionzip/llava_arch.py`` lines 42-80 as written, with the tile side ``side`` for its 24
    (and ``side * side`` for its 576); the unused newline of lines 66-67 left out."""
    num_img, total_patches, feature_dim = image_feature.shape
    num_keep = cur_keep_idx.shape[1]
    num_extra = total_patches - num_keep
    cur_keep_idx_sorted, _ = cur_keep_idx.sort(dim=1)
    cur_keep_idx_sorted_restore = cur_keep_idx_sorted[:, 1:] - 1
    restored_features = torch.zeros((num_img, side * side, feature_dim), dtype=image_feature.dtype)
    mask = torch.zeros(num_img, side * side, dtype=torch.bool)
    mask.scatter_(1, cur_keep_idx_sorted_restore, True)
    kept_features = image_feature[:, 1:num_keep, :]
    restored_features[mask] = kept_features.reshape(-1, feature_dim)
    assert width * height == restored_features.shape[0]
    restored_features = restored_features.view(height, width, side, side, feature_dim)
    restored_features = restored_features.permute(0, 2, 1, 3, 4).contiguous()
    restored_features = restored_features.view(height, side, width * side, feature_dim)
    grid_with_newline = restored_features.view(height * side, width * side, feature_dim)
    mask = mask.view(height, width, side, side).permute(0, 2, 1, 3).contiguous().view(height * side, width * side)
    image_feature_select = grid_with_newline[mask]
    raw_img_feature_merge = image_feature[:, -num_extra:, ].reshape(-1, feature_dim)
    cls_img_feature_merge = image_feature[:, 0, ]
    return torch.cat([image_feature_select, cls_img_feature_merge, raw_img_feature_merge])


def random_encoder_call(images: int, patches: int, heads: int = 4, width: int = 16, seed: int = 0) -> tuple:
    """Random ``attn_weights`` ``(B, heads, 1 + n, 1 + n)``, ``hidden_states`` ``(B, 1 + n, width)`` and
    ``metric`` ``(B, 1 + n, width // heads)`` of ``images`` images of ``patches`` patches."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(images, heads, 1 + patches, 1 + patches, generator=generator)
    hidden = torch.randn(images, 1 + patches, width, generator=generator)
    metric = torch.randn(images, 1 + patches, width // heads, generator=generator)
    return logits.softmax(dim=-1), hidden, metric


@pytest.mark.parametrize("ratio,dominant,contextual", [(0.889, 54, 10), (0.778, 108, 20), (0.667, 162, 30), (0.5, 243, 45)])
def test_rule_equals_the_official_code_on_576_patch_images(ratio, dominant, contextual):
    """The published settings (64 / 128 / 192 tokens of 576: 54 + 10, 108 + 20, 162 + 30) and ρ 0.5."""
    assert unit_budget(ratio, 576) == (dominant, contextual)
    attention, hidden, metric = random_encoder_call(images=3, patches=576)
    expected, all_indices = official_visionzip(attention, hidden, metric, dominant, contextual)
    for image in range(3):
        produced, kept = official_tile_tokens(hidden[image], attention[image, :, 0, 1:].sum(dim=0), metric[image, 1:], ratio)
        assert produced.shape == (dominant + contextual, hidden.shape[-1])
        torch.testing.assert_close(produced, expected[image], rtol=1e-6, atol=1e-6)
        assert kept.tolist() == sorted((all_indices[image, 1:] - 1).tolist())


def test_rule_keeps_cls_alone_where_the_budget_is_one_token():
    attention, hidden, metric = random_encoder_call(images=1, patches=36)
    produced, _ = official_tile_tokens(hidden[0], attention[0, :, 0, 1:].sum(dim=0), metric[0, 1:], 0.98)  # round(36 x 0.02) = 1
    assert torch.equal(produced, hidden[0, :1])


class FeatureLayerRecorder:
    """Records, from the unmodified tower, what the official code reads: ``layers[-2]``'s attention
    probabilities (eager attention, ``output_attentions``) and its keys averaged over heads."""

    def __init__(self, model) -> None:
        self.model = model
        self.keys: list[torch.Tensor] = []

    def __call__(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tower = self.model.model.vision_tower
        attention = tower.encoder.layers[-2].self_attn
        heads = attention.num_heads
        hook = attention.k_proj.register_forward_hook(
            lambda module, args, out: self.keys.append(out.view(*out.shape[:2], heads, -1).mean(dim=2))
        )
        saved = tower.config._attn_implementation
        tower.config._attn_implementation = "eager"
        try:
            with torch.no_grad():
                output = tower(pixel_values, output_hidden_states=True, output_attentions=True)
        finally:
            tower.config._attn_implementation = saved
            hook.remove()
        return output.attentions[-2], output.hidden_states[-2], self.keys[-1]


def encoder_tiles(model, inputs: dict) -> tuple[torch.Tensor, list[int]]:
    """The tiles the tower encodes ``(tiles, 3, H, W)`` and each image's count (LLaVA-NeXT: its base
    view and crops, padding tiles left out; LLaVA-1.5: one)."""
    pixels = inputs["pixel_values"]
    if pixels.dim() == 4:
        return pixels, [1] * pixels.shape[0]
    config = model.config
    counts = [anyres_tile_count(size, config.image_grid_pinpoints, config.vision_config.image_size) for size in inputs["image_sizes"]]
    return torch.cat([image[:count] for image, count in zip(pixels, counts)]), counts


def official_image_tokens(model, inputs: dict, ratio: float) -> list[torch.Tensor]:
    """Per image, its official tokens through the projector in the official order: LLaVA-1.5's
    ``[CLS]``, dominant, contextual; LLaVA-NeXT's base view, then ``restore_image_features_sorted`` of
    its crops (``llava_arch.py`` lines 107-121; HF's LLaVA-NeXT always has a crop)."""
    pixels, counts = encoder_tiles(model, inputs)
    sizes = inputs.get("image_sizes")
    attention, hidden, metric = FeatureLayerRecorder(model)(pixels)
    dominant, contextual = unit_budget(ratio, hidden.shape[1] - 1)
    with torch.no_grad():
        tokens, keep_idx = official_visionzip(attention, hidden, metric, dominant, contextual)
        tokens = model.model.multi_modal_projector(tokens)
    images = []
    for image, (image_feature, keep_idxs) in enumerate(zip(tokens.split(counts), keep_idx.split(counts))):
        if sizes is None:
            images.append(image_feature[0])
        else:
            num_patch_height, num_patch_width = anyres_grid_shape(
                sizes[image], model.config.image_grid_pinpoints, model.config.vision_config.image_size
            )
            side = model.config.vision_config.image_size // model.config.vision_config.patch_size
            crops = restore_image_features_sorted(image_feature[1:], keep_idxs[1:], num_patch_width, num_patch_height, side)
            images.append(torch.cat((image_feature[0], crops)))
    return images


def official_prompt(model, inputs: dict, embeds: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept ``(B, T)`` bool and the LLM input embeddings with each image's official tokens in its first
    placeholders (:func:`official_image_tokens`)."""
    return placed_in_first_placeholders(model, inputs, embeds, official_image_tokens(model, inputs, ratio))


def placed_in_first_placeholders(model, inputs: dict, embeds: torch.Tensor, images: list[torch.Tensor]) -> tuple:
    """Kept ``(B, T)`` bool (the text and each image's first ``K_i`` placeholders) and ``embeds`` with
    ``images[i]`` ``(K_i, hidden)`` there."""
    image_id = model.config.image_token_id
    kept = inputs["attention_mask"].bool() & (inputs["input_ids"] != image_id)
    merged = embeds.clone()
    lengths = [image.shape[0] for image in capture_image_features(model, inputs)]
    places = [(b, t) for b, t in (inputs["input_ids"] == image_id).nonzero().tolist()]
    for tokens, start in zip(images, [sum(lengths[:i]) for i in range(len(lengths))]):
        for (b, t), token in zip(places[start : start + tokens.shape[0]], tokens):
            kept[b, t] = True
            merged[b, t] = token
    assert len(images) == len(lengths) and sum(lengths) == len(places)
    return kept, merged


def capture_image_features(model, inputs: dict) -> list[torch.Tensor]:
    """The unmodified model's features per image (one per image, placeholders in prompt order)."""
    arguments = {name: inputs[name] for name in ("pixel_values", "image_sizes") if name in inputs}
    with torch.no_grad():
        return list(model.model.get_image_features(**arguments).pooler_output)


@pytest.mark.parametrize("family,kind,ratio", [
    ("llava", "image", 0.25), ("llava", "multi_image", 0.5), ("llava_next", "image", 0.25),
    pytest.param("llava_next", "multi_image", 0.5, marks=pytest.mark.slow),
])
def test_visionzip_equals_the_official_code_through_the_model(family, kind, ratio):
    """Prefill logits and 16 greedy steps of the engine against the masking reference run on the
    official layout (two prompts, left-padded; one or two images each: 36-patch images on LLaVA-1.5,
    anyres images of 16-patch tiles on LLaVA-NeXT)."""
    model, inputs = model_of(family, "sdpa"), vl_inputs(processor_of(family), 2, kind)
    lm_inputs = capture_language_model_inputs(model, inputs)
    kept, merged = official_prompt(model, inputs, lm_inputs.embeds, ratio)
    report = assert_visionzip_runs_like_reference(model, inputs, lm_inputs, kept, merged, ratio)
    assert report.kept_positions == [row.nonzero().flatten().tolist() for row in kept]


def test_llava_visionzip_at_ratio_zero_leaves_the_features_alone():
    model, inputs = model_of("llava", "sdpa"), vl_inputs(processor_of("llava"), 2, "image")
    with torch.no_grad():
        expected = model(**inputs).logits
        with Halting(model, method="visionzip", ratio=0.0):
            logits = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert torch.equal(logits[valid], expected[valid])


def test_llava_next_visionzip_refuses_a_ratio_whose_official_tokens_outnumber_the_placeholders():
    """The 112 x 168 image (five 16-patch tiles, 70 placeholders after unpadding) at ρ 0.05: five
    tiles of round(16 x 0.95) = 15 official tokens do not fit."""
    model, inputs = model_of("llava_next", "sdpa"), vl_inputs(processor_of("llava_next"), 1, "image", first=1)
    with Halting(model, method="visionzip", ratio=0.05), pytest.raises(ValueError, match="75 tokens but the prompt holds 70"):
        model(**inputs)

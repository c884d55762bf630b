"""VisionZip on LLaVA-1.5 (a CLIP tower with ``[CLS]``) equals a line-by-line re-reading of the
official code (dvlab-research/VisionZip at 3151f6d, ``visionzip/clip_encoder.py``
``CLIPVisionTower_VisionZip.forward`` lines 43-83, with the budget of ``visionzip/main.py`` line 7
and the key metric of ``visionzip/utils.py`` ``CLIPAttention_forward`` lines 23-24 and 89): first
the rule alone on random encoder tensors, then the whole tiny model, whose language model must
see ``[CLS]``, the dominant and the contextual tokens through the projector, in that order, in
the first placeholders of each image."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from dash_vl.methods.visionzip import select_before_projector, unit_budget
from tests.conftest import model_of, processor_of, vl_inputs
from tests.methods.test_visionzip import assert_visionzip_runs_like_reference
from tests.reference import capture_language_model_inputs


def official_visionzip(
    attn_weights: torch.Tensor, hidden_states: torch.Tensor, metric: torch.Tensor, dominant: int, contextual: int
) -> torch.Tensor:
    """The official tokens ``(B, dominant + contextual, D)`` of a batch of images, as the official code
    computes them, step by step (the line numbers are ``clip_encoder.py``'s).

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
    return torch.cat([dominant_tokens, contextual_tokens], dim=1)


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
    expected = official_visionzip(attention, hidden, metric, dominant, contextual)
    for image in range(3):
        produced = select_before_projector(hidden[image], attention[image, :, 0, 1:].sum(dim=0), metric[image, 1:], ratio)
        assert produced.shape == (dominant + contextual, hidden.shape[-1])
        torch.testing.assert_close(produced, expected[image], rtol=1e-6, atol=1e-6)


def test_rule_keeps_cls_alone_where_the_budget_is_one_token():
    attention, hidden, metric = random_encoder_call(images=1, patches=36)
    produced = select_before_projector(hidden[0], attention[0, :, 0, 1:].sum(dim=0), metric[0, 1:], 0.98)  # round(36 x 0.02) = 1
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


def official_prompt(model, inputs: dict, embeds: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept ``(B, T)`` bool and the LLM input embeddings with each image's official tokens, through the
    projector, in its first ``M`` placeholders (the official layout: ``[CLS]``, dominant, contextual)."""
    attention, hidden, metric = FeatureLayerRecorder(model)(inputs["pixel_values"])
    patches = hidden.shape[1] - 1
    dominant, contextual = unit_budget(ratio, patches)
    with torch.no_grad():
        tokens = model.model.multi_modal_projector(official_visionzip(attention, hidden, metric, dominant, contextual))
    image_id = model.config.image_token_id
    kept = inputs["attention_mask"].bool() & (inputs["input_ids"] != image_id)
    merged = embeds.clone()
    image = 0
    for b in range(kept.shape[0]):
        places = (inputs["input_ids"][b] == image_id).nonzero().flatten().tolist()
        for start in range(0, len(places), patches):
            first = places[start : start + dominant + contextual]
            kept[b, first] = True
            merged[b, first] = tokens[image]
            image += 1
    assert image == hidden.shape[0]
    return kept, merged


@pytest.mark.parametrize("kind,ratio", [("image", 0.25), ("multi_image", 0.5)])
def test_llava_visionzip_equals_the_official_code_through_the_model(kind, ratio):
    """Prefill logits and 16 greedy steps of the engine against the masking reference run on the
    official layout (two prompts, left-padded; one or two 36-patch images each)."""
    model, inputs = model_of("llava", "sdpa"), vl_inputs(processor_of("llava"), 2, kind)
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

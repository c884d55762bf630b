"""VisionZip equals a slow reference of its official rule on every VL family: attention maps taken
from an eager attention function that records them, keys from the projection layers, the
dominant / contextual rule written out per unit with Python lists, then the LLM run on the
kept (and merged) embeddings by the masking reference with its halting at layer 0."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AttentionInterface

from dash_vl import Halting
from dash_vl.adapters import adapter_for
from dash_vl.adapters.qwen2_vl import window_order
from tests.conftest import FAMILY_NAMES, family_kinds, four_image_prompt, model_of, processor_of, vl_inputs
from tests.reference import (
    STEPS,
    MaskingReference,
    assert_engine_matches_reference,
    capture_language_model_inputs,
    generate,
)

CLIP_FAMILIES = ("llava", "llava_next")


class AttentionRecorder:
    """An eager attention function (fp32 softmax) that keeps the probabilities of one module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.maps: list[torch.Tensor] = []

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        logits = (query.float() @ key.float().transpose(-1, -2)) * scaling
        if attention_mask is not None:
            logits = logits + attention_mask
        probs = logits.softmax(dim=-1)
        if module is self.module:
            self.maps.extend(probs)  # one (heads, n, n) map per tile / segment
        return (probs.to(value.dtype) @ value).transpose(1, 2).contiguous(), probs


def feature_attention(model, family: str) -> torch.nn.Module:
    """The attention of the encoder layer the LLM reads (the last; the second-to-last on the LLaVA
    families' CLIP towers, ``vision_feature_layer = -2``)."""
    inner = model.model
    if family.startswith("qwen"):
        return inner.visual.blocks[-1].attn
    if family == "llava_onevision":
        return inner.vision_tower.encoder.layers[-1].self_attn
    if family in CLIP_FAMILIES:
        return inner.vision_tower.encoder.layers[-2].self_attn
    return inner.vision_tower.encoder.layer[-1].attention


def raw_keys(model, family: str, attention: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    """Hook the key projection; collects ``(n, heads, head_dim)`` keys before rotary, per call."""
    keys: list[torch.Tensor] = []
    heads = attention.num_heads
    if family.startswith("qwen"):
        hook = attention.qkv.register_forward_hook(lambda m, a, out: keys.append(out.view(out.shape[0], 3, heads, -1)[:, 1]))
    else:
        source = attention.k_norm if family == "internvl" else attention.k_proj
        hook = source.register_forward_hook(lambda m, a, out: keys.extend(out.view(*out.shape[:2], heads, -1)))
    return keys, hook


def encoder_evidence(model, family: str, inputs: dict) -> tuple[list[float], list[torch.Tensor]]:
    """Per patch (encoder order, [CLS] dropped): dominance and head-mean key, from a recorded run."""
    attention = feature_attention(model, family)
    recorder = AttentionRecorder(attention)
    AttentionInterface.register("recording_eager", recorder)
    vision_config = model.config.vision_config
    saved = vision_config._attn_implementation
    keys, hook = raw_keys(model, family, attention)
    vision_config._attn_implementation = "recording_eager"
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        vision_config._attn_implementation = saved
        hook.remove()
    scores, metrics = [], []
    keys = torch.cat(keys) if family.startswith("qwen") else keys
    offset = 0
    for index, probs in enumerate(recorder.maps):
        n = probs.shape[-1]
        if family in ("internvl", *CLIP_FAMILIES):  # [CLS] row, summed over heads, to the patches
            scores += probs[:, 0, 1:].sum(dim=0).tolist()
            metrics += list(keys[index][1:].float().mean(dim=1))
        else:  # received attention, mean over heads and queries
            scores += probs.mean(dim=(0, 1)).tolist()
            tile_keys = keys[offset : offset + n] if family.startswith("qwen") else keys[index]
            metrics += list(tile_keys.float().mean(dim=1))
        offset += n
    return scores, metrics


def token_evidence(model, family: str, modality: str, scores: list, metrics: list, inputs: dict) -> list[tuple]:
    """Per LLM visual token of ``modality``, in placement order: (score, metric, unit)."""
    if family.startswith("qwen"):
        grid = inputs["image_grid_thw" if modality == "image" else "video_grid_thw"]
        groups = [(sum(scores[4 * g : 4 * g + 4]) / 4, sum(metrics[4 * g : 4 * g + 4]) / 4) for g in range(len(scores) // 4)]
        order = window_order(model.model.visual, grid)
        if family == "qwen2_5_vl":
            order = order.tolist()  # groups[i] is LLM token order[i]
            assert modality == "video" or order != sorted(order), "image prompts should exercise the window order"
            restored = [None] * len(groups)
            for i, token in enumerate(order):
                restored[token] = groups[i]
            groups = restored
        units, slices = [], 0
        for t, h, w in grid.tolist():
            for _ in range(t):
                units += [slices] * (h * w // 4)
                slices += 1
        return [(s, m, u) for (s, m), u in zip(groups, units)]
    if family == "internvl":
        tiles = inputs["pixel_values"].shape[0]
        per_tile = len(scores) // tiles
        side = math.isqrt(per_tile)
        tokens = []
        for tile in range(tiles):
            for row in range(side // 2):
                for col in range(side // 2):
                    patches = [tile * per_tile + (2 * row + dr) * side + 2 * col + dc for dr in (0, 1) for dc in (0, 1)]
                    tokens.append((sum(scores[p] for p in patches) / 4, sum(metrics[p] for p in patches) / 4, tile))
        return tokens
    # LLaVA-OneVision, LLaVA-NeXT: the model's own packing / pooling moves the (score, metric, tile) channels
    from dash_vl.adapters import adapter_for

    patches = torch.cat([torch.tensor(scores)[:, None], torch.stack(metrics)], dim=1)
    evidence = adapter_for(model).tokens_from_patches(modality, patches, inputs)
    return list(zip(evidence.score.tolist(), list(evidence.metric), evidence.unit.tolist()))


def visionzip_reference(model, family: str, inputs: dict, embeds: torch.Tensor, ratio: float) -> tuple:
    """Kept ``(B, T)`` bool and the embeddings with merged contextual tokens, by the official rule."""
    modality = "video" if "pixel_values_videos" in inputs else "image"
    scores, metrics = encoder_evidence(model, family, inputs)
    evidence = token_evidence(model, family, modality, scores, metrics, inputs)
    token_id = getattr(model.config, f"{modality}_token_id")
    places = (inputs["input_ids"] == token_id).nonzero().tolist()
    assert len(places) == len(evidence)
    kept = inputs["attention_mask"].bool() & (inputs["input_ids"] != token_id)
    merged = embeds.clone()
    units: dict[tuple, list] = {}
    for (b, t), (score, metric, unit) in zip(places, evidence):
        if unit >= 0:
            units.setdefault((b, unit), []).append((t, score, metric))
    for (b, _), members in units.items():
        retained = round(len(members) * (1 - ratio))
        contextual = 10 * retained // 64
        by_score = sorted(members, key=lambda m: (-m[1], m[0]))
        dominant = by_score[: retained - contextual]
        rest = sorted(by_score[retained - contextual :], key=lambda m: m[0])
        for t, _, _ in dominant:
            kept[b, t] = True
        if contextual == 0:
            continue
        step = max(1, len(rest) // contextual)
        targets = [rest[i] for i in range(0, len(rest), step)][:contextual]
        joined: dict[int, list[int]] = {t: [] for t, _, _ in targets}
        for t, _, metric in rest:
            if t in joined:
                continue
            similarity = [float(torch.cosine_similarity(metric, target[2], dim=0)) for target in targets]
            joined[targets[similarity.index(max(similarity))][0]].append(t)
        for target, members_joined in joined.items():
            kept[b, target] = True
            if members_joined:
                merged[b, target] = embeds[b, target] + embeds[b, members_joined].mean(dim=0)
    return kept, merged


FAMILY_PROMPTS = family_kinds(("image", "video"), tuple(name for name in FAMILY_NAMES if name not in CLIP_FAMILIES))
"""LLaVA-1.5 and LLaVA-NeXT run the official rule before their projector: ``tests/methods/test_visionzip_clip.py``."""


@pytest.mark.parametrize("family,kind", FAMILY_PROMPTS)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_visionzip_matches_reference_rule(family, kind, ratio):
    model, inputs = model_of(family, "sdpa"), vl_inputs(processor_of(family), 2, kind)
    lm_inputs = capture_language_model_inputs(model, inputs)
    kept, merged = visionzip_reference(model, family, inputs, lm_inputs.embeds, ratio)
    assert_visionzip_runs_like_reference(model, inputs, lm_inputs, kept, merged, ratio)


@pytest.fixture(scope="module")
def four_images():
    """One Qwen2-VL prompt with four 224 x 224 images: four units of 64 visual tokens."""
    return four_image_prompt()


@pytest.mark.parametrize("ratio,dominant,contextual", [(0.5, 27, 5), (0.75, 14, 2), (0.9, 6, 0), (0.99, 1, 0)])
def test_visionzip_official_split_and_merge_on_large_units(four_images, ratio, dominant, contextual):
    """64-token units: retained = round(64 (1 - ρ)) split as 10/64 contextual; the contextual targets
    carry merged features, equal to the reference."""
    model = model_of("qwen2_vl", "sdpa")
    lm_inputs = capture_language_model_inputs(model, four_images)
    kept, merged = visionzip_reference(model, "qwen2_vl", four_images, lm_inputs.embeds, ratio)
    changed = (merged != lm_inputs.embeds).any(dim=-1)
    assert int(changed.sum()) <= 4 * contextual and int(changed.sum()) >= (4 if contextual else 0)
    with Halting(model, method="visionzip", ratio=ratio) as halting, torch.no_grad():
        captured = []
        handle = model.model.language_model.layers[0].register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        model(**four_images)
        handle.remove()
    report = halting.last_report
    assert report.eligible_tokens == [256]
    assert report.kept_tokens_per_layer[0][0] == report.prompt_tokens[0] - 256 + 4 * (dominant + contextual)
    assert report.kept_positions[0] == kept[0].nonzero().flatten().tolist()
    torch.testing.assert_close(captured[0][0], merged[0, kept[0]], rtol=1e-6, atol=1e-6)


def test_visionzip_budget_that_rounds_to_zero_is_a_clear_error():
    model, inputs = model_of("qwen2_vl", "sdpa"), vl_inputs(processor_of("qwen2_vl"), 2, "video")  # 4-token frames
    with Halting(model, method="visionzip", ratio=0.9), pytest.raises(ValueError, match="retains round"):
        model(**inputs)


def test_visionzip_decides_before_the_llm_on_visual_tokens_only():
    model, inputs = model_of("internvl", "sdpa"), vl_inputs(processor_of("internvl"), 2, "image")
    with pytest.raises(ValueError, match="start_layer must be 0"):
        Halting(model, method="visionzip", ratio=0.5, start_layer=2)
    with pytest.raises(ValueError, match="scope must be 'visual'"):
        Halting(model, method="visionzip", ratio=0.5, scope="all")
    with Halting(model, method="visionzip", ratio=0.5) as halting, torch.no_grad():
        language_model = model.model.language_model
        with pytest.raises(ValueError, match="reads the vision encoder"):
            language_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        model(**inputs)
    assert halting.last_report.start_layer == 0
    assert "get_image_features" not in model.model.__dict__  # the recorder's wrapper is gone


def test_llava_onevision_video_evidence_reads_frames_under_either_argument_name():
    """transformers 5.17 passes video frames to ``get_video_features`` as ``pixel_values``, later
    releases as ``pixel_values_videos``: the evidence must be the same."""
    model = model_of("llava_onevision", "sdpa")
    adapter = adapter_for(model)
    vision = model.config.vision_config
    frames = torch.zeros(2, 3, vision.num_channels, vision.image_size, vision.image_size)
    patches = torch.randn(2 * 3 * (vision.image_size // vision.patch_size) ** 2, 1 + vision.hidden_size)
    older = adapter.tokens_from_patches("video", patches, {"pixel_values": frames})
    newer = adapter.tokens_from_patches("video", patches, {"pixel_values_videos": frames})
    assert older.score.shape == (2 * (3 * 4 + 1),)  # 3 frames of 2 x 2 pooled tokens and a newline, per video
    for field in ("score", "metric", "unit"):
        assert torch.equal(getattr(older, field), getattr(newer, field))


def assert_visionzip_runs_like_reference(
    model, inputs: dict, lm_inputs, kept: torch.Tensor, merged: torch.Tensor, ratio: float, method: str = "visionzip"
):
    """The engine under VisionZip (or ``method``) keeps ``kept`` (``(batch, T)`` bool) and runs like the masking
    reference fed the ``merged`` input embeddings: prefill logits and ``STEPS`` greedy decode steps. Returns the
    halting report."""
    lm_inputs.embeds = merged
    reference = MaskingReference(model, ratio, 0, kept, given_active=kept)
    with torch.no_grad():
        expected_logits = model.lm_head(reference.prefill(lm_inputs))
    expected_tokens, expected_step_logits = reference.greedy(expected_logits[:, -1], STEPS)
    with Halting(model, method=method, ratio=ratio) as halting:
        with torch.no_grad():
            logits = model(**inputs, position_ids=lm_inputs.position_ids).logits
        report = halting.last_report
        produced = generate(model, inputs)
    assert_engine_matches_reference(
        report, reference, inputs["attention_mask"].bool(), logits, expected_logits, produced, expected_tokens, expected_step_logits, STEPS
    )
    return report

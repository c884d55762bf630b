"""Encoder-side halting (ViT-DASH) on tiny Qwen2-VL / Qwen2.5-VL models with 4-block vision towers
(Qwen2.5-VL: windows in blocks 0, 1, 3; full frames in block 2): with ``vision_ratio = 0`` equal to
the unmodified tower and model; otherwise equal to a slow masking reference of the encoder
(:mod:`tests.encoder_reference`), alone and under each language-model method."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from dash_vl import Halting, HaltingConfig
from dash_vl.encoder_halting import keep_per_unit, recut_segments
from dash_vl.hf_compat import qwen2_5_vl_window_index
from dash_vl.random_models import random_model, tiny_config
from tests.conftest import model_of, processor_of, vl_inputs
from tests.encoder_reference import frame_units, record_blocks, reference_encoder

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
PROMPTS = (("image", 2), ("video", 1))


@cache
def deep_tower_model(family: str):
    """A tiny model of ``family`` whose vision tower has 4 blocks (Qwen2.5-VL: block 2 full attention)."""
    config = tiny_config(family, processor_of(family).tokenizer, num_layers=4)
    config.vision_config.depth = 4
    if family == "qwen2_5_vl":
        config.vision_config.fullatt_block_indexes = [2]
    return random_model(config)


@pytest.fixture(params=QWEN_FAMILIES)
def family(request):
    return request.param


@pytest.fixture(params=PROMPTS, ids=[f"{kind}-batch{batch}" for kind, batch in PROMPTS])
def prompt(request, family):
    kind, batch = request.param
    return vl_inputs(processor_of(family), batch, kind)


def tower_inputs(prompt: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if "pixel_values" in prompt:
        return prompt["pixel_values"], prompt["image_grid_thw"]
    return prompt["pixel_values_videos"], prompt["video_grid_thw"]


def tower_of(model):
    return model.model.visual


def merged_in_output_order(tower, hidden: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """The merger's tokens of patch states in the blocks' order, put in the tower's output order."""
    merged = tower.merger(hidden)
    if hasattr(tower, "fullatt_block_indexes"):
        merged = merged[torch.argsort(qwen2_5_vl_window_index(tower, grid_thw))]
    return merged


def test_vision_ratio_zero_matches_unmodified_encoder_and_model(family, prompt):
    model = deep_tower_model(family)
    pixels, grid = tower_inputs(prompt)
    with torch.no_grad():
        expected_tower = tower_of(model)(pixels, grid_thw=grid)
        expected_logits = model(**prompt).logits
    with Halting(model, vision_ratio=0.0, vision_start_layer=1) as halting:
        with torch.no_grad():
            produced_tower = tower_of(model)(pixels, grid_thw=grid)
            logits = model(**prompt).logits
    assert torch.equal(produced_tower.last_hidden_state, expected_tower.last_hidden_state)
    assert torch.equal(produced_tower.pooler_output, expected_tower.pooler_output)
    valid = prompt["attention_mask"].bool()
    assert torch.equal(logits[valid], expected_logits[valid])
    assert halting.encoder_reports[-1].kept == halting.encoder_reports[-1].patches


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("start", [1, 2, 3])
def test_encoder_halting_matches_masking_reference(family, prompt, ratio, start):
    model = deep_tower_model(family)
    tower = tower_of(model)
    pixels, grid = tower_inputs(prompt)
    expected, active = reference_encoder(tower, pixels, grid, ratio, start)
    with Halting(model, vision_ratio=ratio, vision_start_layer=start) as halting:
        with torch.no_grad():
            produced = tower(pixels, grid_thw=grid)
    report = halting.encoder_reports[-1]
    assert report.kept == [int(active[unit].sum()) for unit in frame_units(grid)]
    torch.testing.assert_close(produced.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(produced.pooler_output, merged_in_output_order(tower, expected, grid), rtol=1e-5, atol=1e-5)


def test_language_model_sees_every_visual_token(family, prompt):
    model = deep_tower_model(family)
    embeds = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: embeds.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**prompt)
            with Halting(model, vision_ratio=0.9, vision_start_layer=1) as halting:
                model(**prompt)
    finally:
        hook.remove()
    unmodified, halted = embeds
    visual = halting.adapter.visual_mask(prompt["input_ids"])
    assert halted.shape == unmodified.shape
    assert torch.equal(halted[~visual], unmodified[~visual])
    assert not torch.allclose(halted[visual], unmodified[visual])
    assert halting.last_report.prompt_tokens == prompt["attention_mask"].sum(dim=1).tolist()


@pytest.mark.parametrize(
    "knobs", [dict(method="dash", ratio=0.5, start_layer=2), dict(method="fastv", ratio=0.5), dict(method="dart", ratio=0.5)]
)
def test_composes_with_language_model_methods(family, knobs):
    """ViT-DASH + an LM method equals that LM method on a model whose tower returns the encoder reference."""
    model = deep_tower_model(family)
    prompt = vl_inputs(processor_of(family), 2, "image")
    tower = tower_of(model)
    pixels, grid = tower_inputs(prompt)
    with Halting(model, vision_ratio=0.75, vision_start_layer=2, **knobs) as halting:
        with torch.no_grad():
            logits = model(**prompt).logits
        report = halting.last_report

    expected_states, _ = reference_encoder(tower, pixels, grid, 0.75, 2)
    _, output = record_blocks(tower, pixels, grid)
    with torch.no_grad():
        output.pooler_output = merged_in_output_order(tower, expected_states, grid)
    tower.forward = lambda *args, **kwargs: output
    try:
        with Halting(model, **knobs) as halting, torch.no_grad():
            expected_logits = model(**prompt).logits
            expected_report = halting.last_report
    finally:
        del tower.forward
    assert report.kept_positions == expected_report.kept_positions
    valid = prompt["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], expected_logits[valid], rtol=1e-5, atol=1e-5)


def test_keep_per_unit_halts_the_lowest_floor_ratio_of_each_unit():
    scores = torch.tensor([5.0, 1.0, 3.0, 2.0, 9.0, 0.0, 4.0])
    units = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    assert keep_per_unit(scores, units, 0.5).tolist() == [True, False, True, False, True, False, True]


def test_recut_segments_drops_halted_patches_and_empty_segments():
    segments = torch.tensor([0, 4, 8, 12], dtype=torch.int32)
    active = torch.tensor([0, 2, 3, 9, 11])
    assert recut_segments(segments, active).tolist() == [0, 3, 5]


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_vision_ratio_outside_unit_interval_is_rejected(value):
    with pytest.raises(ValueError, match="vision_ratio"):
        HaltingConfig(vision_ratio=value)


@pytest.mark.parametrize("value", ["0.5", True])
def test_vision_ratio_of_wrong_type_is_rejected(value):
    with pytest.raises(TypeError, match="vision_ratio"):
        HaltingConfig(vision_ratio=value)


@pytest.mark.parametrize("value", [0.0, 1.0, -1, "2"])
def test_bad_vision_start_layer_is_rejected(value):
    with pytest.raises((TypeError, ValueError), match="vision_start_layer"):
        HaltingConfig(vision_ratio=0.5, vision_start_layer=value)


def test_vision_start_layer_past_the_encoder_depth_is_rejected():
    with pytest.raises(ValueError, match=r"vision_start_layer must be in \[0, 4\)"):
        Halting(deep_tower_model("qwen2_vl"), vision_ratio=0.5, vision_start_layer=4)


def test_vision_ratio_with_visionzip_is_rejected():
    with pytest.raises(ValueError, match="visionzip"):
        HaltingConfig(method="visionzip", ratio=0.5, vision_ratio=0.5)


def test_vision_ratio_on_a_family_without_encoder_adapter_is_a_clear_error():
    with pytest.raises(NotImplementedError, match="encoder-side halting"):
        Halting(model_of("llava_onevision", "sdpa"), vision_ratio=0.5)


def test_encoder_reports_need_vision_ratio():
    with pytest.raises(RuntimeError, match="vision_ratio"):
        Halting(deep_tower_model("qwen2_vl"), ratio=0.5).encoder_reports

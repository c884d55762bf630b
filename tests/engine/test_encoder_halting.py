"""Encoder-side halting (ViT-DASH) on tiny models of every family with 4-block vision towers
(Qwen2.5-VL: windows in blocks 0, 1, 3; full frames in block 2): with ``vision_ratio = 0`` equal to
the unmodified tower and model; otherwise equal to a slow masking reference of the encoder
(:mod:`tests.encoder_reference`), alone and under each language-model method."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Qwen2Config

from dash_vl import Halting, HaltingConfig
from dash_vl.engine.vision_encoder import keep_per_unit, recut_segments
from dash_vl.hf_compat import qwen2_5_vl_window_index
from dash_vl.testing import random_model, tiny_config
from tests.conftest import FAMILY_NAMES, processor_of, skip_unless_taken, vl_inputs
from tests.encoder_reference import (
    frame_units,
    internvit_layer_by_hand,
    record_blocks,
    reference_encoder,
    reference_tiled_encoder,
    siglip_layer_by_hand,
)

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
PROMPTS = (("image", 2), ("video", 1))


@cache
def deep_tower_model(family: str):
    """A tiny model of ``family`` whose vision tower has 4 blocks (Qwen2.5-VL: block 2 full attention)."""
    config = tiny_config(family, processor_of(family).tokenizer, num_layers=4)
    if family in QWEN_FAMILIES:
        config.vision_config.depth = 4
    else:
        config.vision_config.num_hidden_layers = 4
    if family == "qwen2_5_vl":
        config.vision_config.fullatt_block_indexes = [2]
    return random_model(config)


@pytest.fixture(params=FAMILY_NAMES)
def family(request):
    return request.param


@pytest.fixture(params=QWEN_FAMILIES)
def qwen_family(request):
    return request.param


@pytest.fixture(params=PROMPTS, ids=[f"{kind}-batch{batch}" for kind, batch in PROMPTS])
def prompt_kind(request):
    return request.param


def tower_of(model):
    inner = model.model
    return inner.visual if hasattr(inner, "visual") else inner.vision_tower


def tower_calls(model, prompt: dict) -> list[tuple[tuple, dict]]:
    """The arguments of every call of the vision tower while the unmodified model runs ``prompt``."""
    calls = []
    hook = tower_of(model).register_forward_pre_hook(lambda module, args, kwargs: calls.append((args, kwargs)), with_kwargs=True)
    with torch.no_grad():
        model(**prompt)
    hook.remove()
    return calls


def merged_in_output_order(tower, hidden: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """The merger's tokens of patch states in the blocks' order, put in the tower's output order."""
    merged = tower.merger(hidden)
    if hasattr(tower, "fullatt_block_indexes"):
        merged = merged[torch.argsort(qwen2_5_vl_window_index(tower, grid_thw))]
    return merged


def grid_of(call: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = call
    return args[1] if len(args) > 1 else kwargs["grid_thw"]


def test_vision_ratio_zero_matches_unmodified_encoder_and_model(family, prompt_kind):
    skip_unless_taken(family, prompt_kind[0])
    model = deep_tower_model(family)
    prompt = vl_inputs(processor_of(family), *reversed(prompt_kind))
    (args, kwargs), *_ = tower_calls(model, prompt)
    tower = tower_of(model)
    with torch.no_grad():
        expected_tower = tower(*args, **kwargs)
        expected_logits = model(**prompt).logits
    with Halting(model, vision_ratio=0.0, vision_start_layer=1) as halting:
        with torch.no_grad():
            produced_tower = tower(*args, **kwargs)
            logits = model(**prompt).logits
    assert torch.equal(produced_tower.last_hidden_state, expected_tower.last_hidden_state)
    if expected_tower.pooler_output is not None:
        assert torch.equal(produced_tower.pooler_output, expected_tower.pooler_output)
    valid = prompt["attention_mask"].bool()
    assert torch.equal(logits[valid], expected_logits[valid])
    assert halting.encoder_reports[-1].kept == halting.encoder_reports[-1].patches


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("start", [1, 2, 3])
def test_qwen_encoder_halting_matches_masking_reference(qwen_family, prompt_kind, ratio, start):
    model = deep_tower_model(qwen_family)
    tower = tower_of(model)
    call = tower_calls(model, vl_inputs(processor_of(qwen_family), *reversed(prompt_kind)))[0]
    pixels, grid = call[0][0], grid_of(call)
    expected, active = reference_encoder(tower, pixels, grid, ratio, start)
    with Halting(model, vision_ratio=ratio, vision_start_layer=start) as halting:
        with torch.no_grad():
            produced = tower(pixels, grid_thw=grid)
    report = halting.encoder_reports[-1]
    assert report.kept == [int(active[unit].sum()) for unit in frame_units(grid)]
    torch.testing.assert_close(produced.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(produced.pooler_output, merged_in_output_order(tower, expected, grid), rtol=1e-5, atol=1e-5)


def test_random_vision_rule_halts_a_seeded_random_set_as_the_reference_does(qwen_family):
    """``vision_rule="random"``: the reference encoder halting by ``torch.rand(P)`` of a generator
    seeded with ``seed``, not by ``‖U‖`` (whose kept set differs)."""
    model = deep_tower_model(qwen_family)
    tower = tower_of(model)
    call = tower_calls(model, vl_inputs(processor_of(qwen_family), 1))[0]
    pixels, grid = call[0][0], grid_of(call)
    scores = torch.rand(pixels.shape[0], generator=torch.Generator().manual_seed(7))
    expected, active = reference_encoder(tower, pixels, grid, 0.5, 2, scores=scores)
    with Halting(model, vision_ratio=0.5, vision_start_layer=2, vision_rule="random", seed=7) as halting:
        with torch.no_grad():
            produced = tower(pixels, grid_thw=grid)
    assert halting.encoder_reports[-1].kept == [int(active[unit].sum()) for unit in frame_units(grid)]
    torch.testing.assert_close(produced.last_hidden_state, expected, rtol=1e-5, atol=1e-5)
    _, dash_active = reference_encoder(tower, pixels, grid, 0.5, 2)
    assert not torch.equal(active, dash_active)


def test_unknown_vision_rule_is_rejected():
    with pytest.raises(ValueError, match="vision_rule"):
        HaltingConfig(vision_ratio=0.5, vision_rule="lowest")


TILED = {
    "llava_onevision": (lambda tower: tower.encoder.layers, siglip_layer_by_hand, lambda tower: tower.post_layernorm, False),
    "internvl": (lambda tower: tower.encoder.layer, internvit_layer_by_hand, lambda tower: tower.layernorm, True),
    "llava": (lambda tower: tower.encoder.layers, siglip_layer_by_hand, lambda tower: nn.Identity(), True),  # CLIP: no final norm on the patches
}


@pytest.mark.parametrize("tiled_family", sorted(TILED))
@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("start", [1, 3])
def test_tiled_encoder_halting_matches_masking_reference(tiled_family, prompt_kind, ratio, start):
    """SigLIP and InternViT: every block's states (``hidden_states``) and the final normed ones; units are
    tiles (video frames), InternViT's ``[CLS]`` never halted."""
    blocks_of, layer_by_hand, final_norm_of, has_cls = TILED[tiled_family]
    skip_unless_taken(tiled_family, prompt_kind[0])
    model = deep_tower_model(tiled_family)
    tower = tower_of(model)
    call = tower_calls(model, vl_inputs(processor_of(tiled_family), *reversed(prompt_kind)))[0]
    expected, active = reference_tiled_encoder(blocks_of(tower), layer_by_hand, call, tower, ratio, start, has_cls)
    with Halting(model, vision_ratio=ratio, vision_start_layer=start) as halting:
        with torch.no_grad():
            produced = tower(*call[0], **call[1])
    assert halting.encoder_reports[-1].kept == active.sum(dim=1).tolist()
    assert not has_cls or bool(active[:, 0].all())
    assert len(produced.hidden_states) == len(blocks_of(tower)) + 1
    torch.testing.assert_close(produced.hidden_states[-1], expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(produced.last_hidden_state, final_norm_of(tower)(expected), rtol=1e-5, atol=1e-5)


def test_language_model_sees_every_visual_token(family, prompt_kind):
    skip_unless_taken(family, prompt_kind[0])
    model = deep_tower_model(family)
    prompt = vl_inputs(processor_of(family), *reversed(prompt_kind))
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
def test_composes_with_language_model_methods(qwen_family, knobs):
    """ViT-DASH + an LM method equals that LM method on a model whose tower returns the encoder reference."""
    model = deep_tower_model(qwen_family)
    prompt = vl_inputs(processor_of(qwen_family), 2, "image")
    tower = tower_of(model)
    call = tower_calls(model, prompt)[0]
    pixels, grid = call[0][0], grid_of(call)
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


def test_keep_per_unit_never_halts_protected_patches_nor_counts_them():
    scores = torch.tensor([0.0, 1.0, 3.0, 2.0, 0.0, 5.0, 4.0])
    units = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    protected = torch.tensor([True, False, False, False, True, False, False])
    assert keep_per_unit(scores, units, 0.5, protected).tolist() == [True, False, True, True, True, True, False]


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


def test_vision_ratio_on_a_text_only_model_is_a_clear_error():
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config._attn_implementation = "sdpa"
    with pytest.raises(ValueError, match="vision_ratio needs a model with a vision encoder"):
        Halting(AutoModelForCausalLM.from_config(config), vision_ratio=0.5)


def test_encoder_reports_need_vision_ratio():
    with pytest.raises(RuntimeError, match="vision_ratio"):
        Halting(deep_tower_model("qwen2_vl"), ratio=0.5).encoder_reports

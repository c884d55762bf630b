"""Qwen3-VL on its tiny random model, whose DeepStack adds visual features after language layers 0, 1
and 2 (as the 8B checkpoint does): equal to HF with nothing halted, equal to the masking reference
(which adds the same features to every token and freezes halted ones) with a decision after, at and
inside the DeepStack layers, for every prompt shape with DASH and FastV and for every method once.

Lean by design (CI's budget): the shared matrices leave this family out (``tests.conftest.OWN_SUITE_FAMILIES``);
the whole file takes about 30 s on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from tests.conftest import model_of, processor_of, vl_inputs
from tests.engine import test_stages as stages
from tests.engine.test_packed import assert_packed_matches_padded, packed_calls  # noqa: F401 (fixture)
from tests.methods.test_methods import check_against, dart_kept, fastv_kept
from tests.methods.test_pre_llm_methods import official_kept
from tests.methods.test_visionzip import assert_visionzip_runs_like_reference, visionzip_reference
from tests.reference import (
    MaskingReference,
    assert_ratio_zero_identical,
    capture_language_model_inputs,
    eligible_tokens,
)

FAMILY = "qwen3_vl"
DEEPSTACK_LAYERS = 3


def case(kind: str = "image", batch: int = 2, attn_implementation: str = "sdpa") -> tuple:
    return model_of(FAMILY, attn_implementation), vl_inputs(processor_of(FAMILY), batch, kind)


def test_tiny_model_adds_deepstack_features_after_three_layers():
    model, inputs = case()
    assert len(model.config.vision_config.deepstack_visual_indexes) == DEEPSTACK_LAYERS
    assert len(capture_language_model_inputs(model, inputs).deepstack) == DEEPSTACK_LAYERS


@pytest.mark.parametrize(
    "kind,batch,attn_implementation",
    [("image", 1, "sdpa"), ("image", 2, "eager"), ("multi_image", 2, "sdpa"), ("video", 2, "sdpa")],
)
def test_ratio_zero_matches_unmodified_model(kind, batch, attn_implementation):
    assert_ratio_zero_identical(*case(kind, batch, attn_implementation))


@pytest.mark.parametrize(
    "kind,start_layer,scope",
    [
        ("image", 1, "all"),  # inside: layer 1's and 2's features go to the active tokens only
        ("image", 3, "visual"),  # after the last DeepStack layer: the decision sees what HF computes
        ("multi_image", 2, "all"),  # at the last one: its features follow the decision
        ("video", 2, "visual"),
    ],
)
def test_dash_matches_masking_reference(kind, start_layer, scope):
    model, inputs = case(kind)
    reference = MaskingReference(model, 0.5, start_layer, eligible_tokens(model, inputs, scope, "halted"))
    check_against(reference, model, inputs, ratio=0.5, start_layer=start_layer, scope=scope)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_fastv_at_k_2_inside_deepstack_matches_eager_attention_reference(kind):
    """FastV's ``K = 2`` decides on layer 1's attention (after two DeepStack terms) before layer 2 (the third)."""
    model, inputs = case(kind)
    kept = fastv_kept(model, inputs, 0.5, layer=2)
    check_against(MaskingReference(model, 0.5, 2, kept, given_active=kept), model, inputs, method="fastv", ratio=0.5)


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.parametrize("method,start_layer", [("dash", 1), ("fastv", 2)])
def test_packed_prefill_matches_padded(method, start_layer, packed_calls):  # noqa: F811 (the fixture)
    model, inputs = case()
    assert_packed_matches_padded(
        model, inputs, packed_calls, packing="always", method=method, ratio=0.5, start_layer=start_layer
    )


# --- every other method once, on a left-padded batch of two images (batch 1 where its test reads one prompt) --


@pytest.mark.parametrize("method,score", [("dash_block", "delta_block"), ("dash_highest", "highest"), ("random", "random")])
def test_ablation_matches_masking_reference(method, score):
    model, inputs = case()
    reference = MaskingReference(model, 0.75, 1, eligible_tokens(model, inputs, "all", "halted"), score=score)
    check_against(reference, model, inputs, method=method, ratio=0.75, start_layer=1)


@pytest.mark.parametrize("method,order", [("dart", "official"), ("dart_prompt_order", "prompt")])
def test_dart_matches_reference_rule(method, order):
    model, inputs = case()
    kept = dart_kept(model, inputs, 0.5, layer=2, order=order)
    check_against(MaskingReference(model, 0.5, 2, kept, given_active=kept), model, inputs, method=method, ratio=0.5)


@pytest.mark.parametrize("method", ["vispruner", "divprune", "cdpruner"])
def test_pre_llm_method_matches_official_rule(method):
    """Decided before layer 0: the kept tokens take their own DeepStack features in every DeepStack layer."""
    model, inputs = case(batch=1)
    kept = official_kept(method, model, FAMILY, inputs)
    check_against(MaskingReference(model, 0.5, 0, kept, given_active=kept), model, inputs, method=method, ratio=0.5)


def test_visionzip_matches_reference_rule():
    model, inputs = case("video")
    lm_inputs = capture_language_model_inputs(model, inputs)
    kept, merged = visionzip_reference(model, FAMILY, inputs, lm_inputs.embeds, 0.5)
    assert_visionzip_runs_like_reference(model, inputs, lm_inputs, kept, merged, 0.5)


def test_multi_selection_matches_masking_reference():
    """Decisions at layers 1 (inside DeepStack) and 4."""
    model, inputs = case()
    reference = stages.staged_reference(model, inputs, 0.5, (1, 4), eligible_tokens(model, inputs, "all", "halted"))
    stages.check_against(reference, model, inputs, method="dash_multi", ratio=0.5, start_layer=1, stage_layers=(4,))


def test_pyramiddrop_matches_the_official_rule_at_batch_one():
    model, inputs = case(batch=1)
    eligible = eligible_tokens(model, inputs, "visual", "halted")
    reference = stages.staged_reference(model, inputs, 0.5, (1, 3, 4), eligible, stages.pyramiddrop_one)
    stages.check_against(reference, model, inputs, method="pyramiddrop", ratio=0.5)


def test_snapkv_matches_kvpress_rule():
    model, inputs = case()
    eligible = eligible_tokens(model, inputs, "all", "halted")
    reference = stages.staged_reference(model, inputs, 0.5, (2,), eligible, stages.snapkv_one)
    stages.check_against(
        reference, model, inputs, method="snapkv", ratio=0.5, start_layer=2, observation_window=stages.WINDOW
    )


@pytest.mark.parametrize("question", ["halted", "after_context"])
def test_static_decoding_equals_eager_decoding(question):
    """DASH at ``l_s = 2``, the last DeepStack layer (``after_context``: the last 4 tokens, text, appended after the
    halted context)."""
    from tests.engine.test_static_decode import assert_same_decoding, halted_on_both_caches

    model, inputs = case()
    question_tokens = 4 if question == "after_context" else None
    dynamic, static = halted_on_both_caches(model, inputs, question_tokens, ratio=0.5, question=question)
    assert_same_decoding(dynamic, static)


def test_encoder_halting_is_refused_with_a_reason():
    model, inputs = case()
    with pytest.raises(NotImplementedError, match="DeepStack"):
        with Halting(model, ratio=0.5, vision_ratio=0.5), torch.no_grad():
            model(**inputs)


def test_ask_keeps_the_sampled_frames_and_times_them_at_the_sampling_rate():
    """Six frames from ``ask``: three frame pairs (Qwen3-VL's processor would sample again without
    ``do_sample_frames=False``), timestamped at 2 frames a second (the middle of each pair)."""
    from dash_vl.api import Query, VisionLanguageModel
    from tests.conftest import random_image

    vlm = VisionLanguageModel(model_of(FAMILY, "sdpa"), processor_of(FAMILY), None)
    inputs = vlm.prepare([Query("What happens?", (), [random_image(seed, (64, 64)) for seed in range(6)])])
    assert inputs["video_grid_thw"][:, 0].tolist() == [3]
    text = vlm.processor.tokenizer.decode(inputs["input_ids"][0])
    assert [f"<{time:.1f} seconds>" in text for time in (0.25, 1.25, 2.25)] == [True] * 3

"""The engine on tiny random VLMs of every family (Qwen2-VL, LLaVA-OneVision, InternVL), with one
image, several images or a video per prompt: equal to HF with nothing halted, equal to the
masking reference otherwise."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from tests.conftest import FAMILY_NAMES, model_of, processor_of, skip_unless_taken, vl_inputs
from tests.reference import (
    STEPS,
    MaskingReference,
    assert_engine_matches_reference,
    assert_ratio_zero_identical,
    capture_language_model_inputs,
    eligible_tokens,
    generate,
)

PROMPTS = [("image", 1), ("image", 2), ("multi_image", 2), ("video", 2)]


@pytest.fixture(params=FAMILY_NAMES)
def family(request):
    return request.param


@pytest.fixture(params=["sdpa", "eager"])
def vl_model(request, family):
    return model_of(family, request.param)


@pytest.fixture(params=PROMPTS, ids=[f"{kind}-batch{batch}" for kind, batch in PROMPTS])
def vl_prompt(request, family):
    kind, batch = request.param
    skip_unless_taken(family, kind)
    return vl_inputs(processor_of(family), batch, kind)


def test_ratio_zero_matches_unmodified_model(vl_model, vl_prompt):
    assert_ratio_zero_identical(vl_model, vl_prompt)


def test_reference_with_nothing_halted_matches_unmodified_model(family, vl_prompt):
    """Guards the reference itself: with ratio 0 it must reproduce HF prefill and greedy decoding."""
    model = model_of(family, "sdpa")
    lm_inputs = capture_language_model_inputs(model, vl_prompt)
    reference = MaskingReference(model, 0.0, 2, eligible_tokens(model, vl_prompt, "all", "halted"))
    with torch.no_grad():
        logits = model.lm_head(reference.prefill(lm_inputs))
        expected_logits = model(**vl_prompt).logits
    tokens, _ = reference.greedy(logits[:, -1], STEPS)
    expected = generate(model, vl_prompt)
    valid = vl_prompt["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], expected_logits[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, expected.sequences[:, -STEPS:])


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("scope,question", [("all", "halted"), ("visual", "halted"), ("all", "protected")])
def test_halting_matches_masking_reference(vl_model, vl_prompt, ratio, scope, question):
    lm_inputs = capture_language_model_inputs(vl_model, vl_prompt)
    reference = MaskingReference(vl_model, ratio, 2, eligible_tokens(vl_model, vl_prompt, scope, question))
    with torch.no_grad():
        expected_logits = vl_model.lm_head(reference.prefill(lm_inputs))
    expected_tokens, expected_step_logits = reference.greedy(expected_logits[:, -1], STEPS)

    with Halting(vl_model, ratio=ratio, start_layer=2, scope=scope, question=question) as halting:
        with torch.no_grad():
            logits = vl_model(**vl_prompt).logits
        report = halting.last_report
        produced = generate(vl_model, vl_prompt)

    assert_engine_matches_reference(
        report, reference, vl_prompt["attention_mask"].bool(), logits, expected_logits, produced, expected_tokens,
        expected_step_logits, STEPS,
    )

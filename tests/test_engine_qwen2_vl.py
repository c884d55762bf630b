"""The engine on a tiny random Qwen2-VL: equal to HF with nothing halted, equal to the masking reference otherwise."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from tests.reference import MaskingReference, assert_engine_matches_reference, capture_language_model_inputs

STEPS = 16


def generate(model, inputs, **kwargs):
    with torch.no_grad():
        return model.generate(
            **inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, output_logits=True,
            return_dict_in_generate=True, **kwargs
        )


def eligible_tokens(model, inputs, scope: str, question: str) -> torch.Tensor:
    """Written out independently of the engine: valid, not last, visual-only or not, question kept or not."""
    ids, valid = inputs["input_ids"], inputs["attention_mask"].bool()
    eligible = valid.clone()
    eligible[:, -1] = False
    visual = (ids == model.config.image_token_id) | (ids == model.config.video_token_id)
    if scope == "visual":
        eligible &= visual
    if question == "protected":
        for b in range(ids.shape[0]):
            last_visual = int(visual[b].nonzero().max())
            eligible[b, last_visual + 1 :] = False
    return eligible


def test_ratio_zero_matches_unmodified_model(model, inputs):
    with torch.no_grad():
        expected_logits = model(**inputs).logits
    expected = generate(model, inputs)
    with Halting(model, ratio=0.0):
        with torch.no_grad():
            logits = model(**inputs).logits
        produced = generate(model, inputs)
    valid = inputs["attention_mask"].bool()  # padding rows carry no meaning in either model
    assert torch.equal(logits[valid], expected_logits[valid])
    assert torch.equal(produced.sequences, expected.sequences)
    for step, expected_step in zip(produced.logits, expected.logits):
        assert torch.equal(step, expected_step)


def test_reference_with_nothing_halted_matches_unmodified_model(sdpa_model, inputs):
    """Guards the reference itself: with ratio 0 it must reproduce HF prefill and greedy decoding."""
    lm_inputs = capture_language_model_inputs(sdpa_model, inputs)
    reference = MaskingReference(sdpa_model, 0.0, 2, eligible_tokens(sdpa_model, inputs, "all", "halted"))
    with torch.no_grad():
        logits = sdpa_model.lm_head(reference.prefill(lm_inputs))
        expected_logits = sdpa_model(**inputs).logits
    tokens, _ = reference.greedy(logits[:, -1], STEPS)
    expected = generate(sdpa_model, inputs)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], expected_logits[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(tokens, expected.sequences[:, -STEPS:])


@pytest.mark.parametrize("ratio", [0.5, 0.9])
@pytest.mark.parametrize("scope,question", [("all", "halted"), ("visual", "halted"), ("all", "protected")])
def test_halting_matches_masking_reference(model, inputs, ratio, scope, question):
    lm_inputs = capture_language_model_inputs(model, inputs)
    reference = MaskingReference(model, ratio, 2, eligible_tokens(model, inputs, scope, question))
    with torch.no_grad():
        expected_logits = model.lm_head(reference.prefill(lm_inputs))
    expected_tokens, expected_step_logits = reference.greedy(expected_logits[:, -1], STEPS)

    with Halting(model, ratio=ratio, start_layer=2, scope=scope, question=question) as halting:
        with torch.no_grad():
            logits = model(**inputs).logits
        report = halting.last_report
        produced = generate(model, inputs)

    assert_engine_matches_reference(
        report, reference, inputs["attention_mask"].bool(), logits, expected_logits, produced, expected_tokens,
        expected_step_logits, STEPS,
    )

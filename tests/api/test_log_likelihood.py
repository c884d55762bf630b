"""Scoring a continuation after a halted prompt (``VisionLanguageModel.log_likelihood`` and the
lmms-eval models' ``loglikelihood``), on the shipped trained scenes model."""

from __future__ import annotations

import pytest
import torch

import dash_vl
from dash_vl.api import Query
from dash_vl.config import HaltingConfig
from dash_vl.halting import Halting
from dash_vl.suites.scenes import scene_questions
from dash_vl.weights.scenes_vlm import shipped_model_directory

SCENE, QUESTIONS = scene_questions("heldout", 0, 3)
COUNT = next(question for question in QUESTIONS if question.kind == "count_all")  # "three"
QUERY = Query(COUNT.question, (SCENE.render(),))


@pytest.fixture(scope="module")
def vlm():
    loaded = dash_vl.load(shipped_model_directory(), dtype="float32")
    loaded.halting = None
    return loaded


def one_pass_log_prob(vlm, continuation: str) -> float:
    """Reference: the unmodified model over prompt + continuation in one forward pass."""
    inputs = vlm.prepare([QUERY])
    tokens = vlm.processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = dict(inputs)
    full["input_ids"] = torch.cat([inputs["input_ids"], tokens], dim=1)
    for name in ("attention_mask", "mm_token_type_ids"):
        if name in full:
            full[name] = torch.cat([inputs[name], (torch.ones_like if name == "attention_mask" else torch.zeros_like)(tokens)], 1)
    with torch.no_grad():
        logits = vlm.model(**full).logits[0, -tokens.shape[1] - 1 : -1].float()
    return logits.log_softmax(dim=-1).gather(1, tokens[0][:, None]).sum().item()


def test_unmodified_score_equals_one_forward_pass(vlm):
    for continuation in (COUNT.answer, "four<|im_end|>", f"{COUNT.answer}<|im_end|>"):
        score = vlm.log_likelihood(QUERY, continuation)
        assert score.log_prob == pytest.approx(one_pass_log_prob(vlm, continuation), abs=1e-4)
    right, wrong = vlm.log_likelihood(QUERY, COUNT.answer), vlm.log_likelihood(QUERY, "four")
    assert right.greedy and not wrong.greedy and right.log_prob > wrong.log_prob and right.tokens == 1


def test_halted_score_follows_the_halted_greedy_answer(vlm):
    vlm.halting = Halting(vlm.model, HaltingConfig(method="dash", ratio=0.5))
    try:
        answer = vlm.answer([QUERY], max_new_tokens=4)[0]
        halted = vlm.log_likelihood(QUERY, answer + "<|im_end|>")
        assert halted.greedy and halted.tokens == 2
        if answer != COUNT.answer:
            assert not vlm.log_likelihood(QUERY, COUNT.answer).greedy
        with vlm.halting, torch.no_grad():
            scores = vlm.model.generate(
                **vlm.prepare([QUERY]), max_new_tokens=2, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
        expected = sum(step[0].float().log_softmax(-1).max().item() for step in scores.logits)
        assert halted.log_prob == pytest.approx(expected, abs=1e-4)
    finally:
        vlm.halting = None


def test_empty_continuation_is_an_error(vlm):
    with pytest.raises(ValueError, match="at least one token"):
        vlm.log_likelihood(QUERY, "")


def test_lmms_eval_loglikelihood_returns_mean_loss_and_greedy():
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from dash_vl.integrations.lmms_eval.models import DashQwen2VL

    model = DashQwen2VL(pretrained=str(shipped_model_directory()), method="none", device="cpu", dtype="float32")
    model.task_dict = {"scenes": {"test": {0: {"scene": SCENE}}}}
    requests = [
        Instance(
            "loglikelihood", (COUNT.question, target, lambda doc: [doc["scene"].render()], 0, "scenes", "test"), index,
            {"task": "scenes", "doc_id": 0, "repeats": 1},
        )
        for index, target in enumerate((COUNT.answer, "four"))
    ]
    (right_loss, right_greedy), (wrong_loss, wrong_greedy) = model.loglikelihood(requests)
    expected = model.vlm.log_likelihood(QUERY, COUNT.answer)
    assert right_loss == pytest.approx(-expected.log_prob / expected.tokens)
    assert right_greedy and not wrong_greedy and right_loss < wrong_loss

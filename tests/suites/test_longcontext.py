"""The offline retrieval suite: reproducible prompts with the fact where asked, exact scoring."""

from __future__ import annotations

import pytest

from dash_vl.suites.prompt_scoring import answer_batch, batches, mean_score
from dash_vl.suites.retrieval import INSTRUCTION, TASKS, RetrievalSample, retrieval_suite
from tests.conftest import processor_of


@pytest.fixture(scope="module")
def tokenizer():
    return processor_of("qwen2_vl").tokenizer


def test_suite_is_reproducible_from_its_seed(tokenizer):
    first = retrieval_suite(tokenizer, lengths=(256,), depths=(0.0, 1.0), per_cell=2, seed=3)
    again = retrieval_suite(tokenizer, lengths=(256,), depths=(0.0, 1.0), per_cell=2, seed=3)
    other = retrieval_suite(tokenizer, lengths=(256,), depths=(0.0, 1.0), per_cell=2, seed=4)
    assert first == again
    assert [s.answer for s in first] != [s.answer for s in other]
    assert [(s.task, s.depth) for s in first] == [(t, d) for t in TASKS for d in (0.0, 1.0) for _ in range(2)]


@pytest.mark.parametrize("task", TASKS)
def test_fact_sits_at_the_requested_depth_and_length_is_reached(tokenizer, task):
    for depth in (0.0, 0.5, 1.0):
        (sample,) = retrieval_suite(tokenizer, (task,), (2000,), (depth,), per_cell=1, seed=1)
        ids, question_tokens = sample.prompt_ids(tokenizer)
        assert 2000 <= len(ids) - question_tokens <= 2080
        assert sample.context.startswith(INSTRUCTION)
        haystack = sample.context[len(INSTRUCTION):]
        where = haystack.index(f"is {sample.answer}.") / len(haystack)
        assert abs(where - depth) < 0.1, (task, depth, where)
        assert sample.answer not in sample.question


def test_prompt_ids_split_context_and_question_exactly(tokenizer):
    (sample,) = retrieval_suite(tokenizer, ("passkey",), (128,), (0.5,), per_cell=1)
    ids, question_tokens = sample.prompt_ids(tokenizer)
    assert tokenizer.decode(ids[-question_tokens:]) == sample.question
    assert tokenizer.decode(ids[:-question_tokens]) == sample.context


def test_scoring_takes_the_first_number():
    sample = RetrievalSample("passkey", 10, 0.0, "context", "question", "12345")
    assert sample.is_correct(" 12345. Remember")
    assert sample.is_correct("12345")
    assert not sample.is_correct(" 1234 5")
    assert not sample.is_correct(" 99 12345")
    assert not sample.is_correct(" no number")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(tasks=("passkey", "sudoku")), "tasks must be among"),
        (dict(depths=(0.5, 1.5)), "depths must be in"),
        (dict(lengths=(0,)), "lengths must be positive"),
    ],
)
def test_suite_rejects_bad_settings(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_suite(tokenizer, **kwargs)


def test_batches_share_task_length_and_question_length(tokenizer):
    suite = retrieval_suite(tokenizer, lengths=(64, 128), depths=(0.0, 1.0), per_cell=3)
    groups = list(batches(suite, tokenizer, size=4))
    assert sorted(id(s) for group in groups for s in group) == sorted(id(s) for s in suite)
    for group in groups:
        assert len(group) <= 4
        assert len({(s.task, s.length, len(tokenizer(s.question).input_ids)) for s in group}) == 1


def test_a_batch_with_mixed_question_lengths_is_refused(tokenizer):
    short = RetrievalSample("passkey", 8, 0.0, "Some context.", "\nKey?", "1")
    long = RetrievalSample("passkey", 8, 0.0, "Some context.", "\nWhat is the pass key, please?", "1")
    with pytest.raises(ValueError, match="one question length"):
        answer_batch(None, tokenizer, [short, long], None)


def test_accuracy_of_nothing_is_nan():
    assert mean_score([]) != mean_score([])

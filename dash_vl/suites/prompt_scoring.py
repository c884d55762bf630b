"""Score a causal LLM on split prompts (context, then question), unmodified or with halting.

A sample is any object with ``task``, ``length``, ``question``, ``prompt_ids(tokenizer)`` and
``score(generated) -> float`` in [0, 1]: the retrieval prompts of :mod:`dash_vl.suites.retrieval`
(exact match) and the code-completion prompts of :mod:`dash_vl.suites.code_completion` (edit similarity).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.config import HaltingConfig
from dash_vl.halting import Halting


class PromptSample(Protocol):
    task: str
    length: int
    question: str

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], int]: ...

    def score(self, generated: str) -> float: ...


@dataclass(frozen=True)
class ScoredAnswer:
    """One greedy answer.

    Attributes:
        generated: the decoded new tokens.
        score: the sample's score of them, in [0, 1] (1 or 0 for exact match).
        relative_flops: the batch's prefill decoder FLOPs over the unmodified model's (1.0 unmodified).
        kept_tokens: this prompt's tokens that the last layer ran on (all of them unmodified).
        prompt_tokens: this prompt's length.
    """

    generated: str
    score: float
    relative_flops: float
    kept_tokens: int
    prompt_tokens: int


def answer_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[PromptSample],
    config: HaltingConfig | None,
    max_new_tokens: int = 8,
) -> list[ScoredAnswer]:
    """Greedy answers to ``samples``, prefilled together (left-padded), with halting under
    ``config`` (``None``: the unmodified model).

    The question's length is given to the engine, so ``config.question`` decides its fate:
    ``"after_context"`` (the DASH paper's protocol), ``"protected"`` or ``"halted"``.

    Raises:
        ValueError: if the samples' questions differ in token count (see :func:`batches`).
    """
    prompts = [sample.prompt_ids(tokenizer) for sample in samples]
    question_tokens = {question for _, question in prompts}
    if len(question_tokens) != 1:
        raise ValueError(f"a batch needs one question length, got {sorted(question_tokens)}; group with batches()")
    width = max(len(ids) for ids, _ in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in prompts], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in prompts], device=model.device)
    generation = dict(
        input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
        pad_token_id=pad,
    )
    with torch.no_grad():
        if config is None:
            output = model.generate(**generation)
            relative_flops, kept = 1.0, [len(ids) for ids, _ in prompts]
        else:
            with Halting(model, config) as halting, halting.question_length(question_tokens.pop()):
                output = model.generate(**generation)
            relative_flops = halting.last_report.relative_flops
            kept = halting.last_report.kept_tokens_per_layer[-1]
    answers = []
    for row, sample, (ids, _), kept_tokens in zip(output, samples, prompts, kept):
        generated = tokenizer.decode(row[width:], skip_special_tokens=True)
        answers.append(ScoredAnswer(generated, sample.score(generated), relative_flops, kept_tokens, len(ids)))
    return answers


def batches(
    samples: Sequence[PromptSample], tokenizer: PreTrainedTokenizerBase, size: int
) -> Iterator[list[PromptSample]]:
    """``samples`` in batches of at most ``size`` that share a task, a length and a question token count."""
    def key(sample: PromptSample) -> tuple:
        return sample.task, sample.length, len(tokenizer(sample.question, add_special_tokens=False).input_ids)

    for _, group in groupby(sorted(samples, key=key), key=key):
        members = list(group)
        for start in range(0, len(members), size):
            yield members[start:start + size]


def mean_score(answers: Sequence[ScoredAnswer]) -> float:
    """Mean score: the fraction correct under exact match (``nan`` for no answers)."""
    return sum(answer.score for answer in answers) / len(answers) if answers else float("nan")

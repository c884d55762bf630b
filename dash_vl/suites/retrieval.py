"""Offline long-context retrieval prompts with exact answers: pass-key and multi-fact QA.

Each prompt is a *context* (an instruction and a haystack of generated sentences hiding one
or more facts) followed by a *question* that ends with the start of the answer sentence, so
that a greedy model's first number is its answer. The split lets a halting run protect the
question (or append it after the halted context, the DASH paper's protocol). Everything is
generated from a seed: no data files, no network.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from dash_vl.suites.split_prompt import split_prompt_ids

TaskName = Literal["passkey", "multifact"]
TASKS: tuple[str, ...] = ("passkey", "multifact")

INSTRUCTION = (
    "There is important information hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about it.\n"
)
SUBJECTS = (
    "The old miller", "A young sailor", "The village baker", "My neighbour", "The tall gardener",
    "A quiet student", "The night guard", "Our teacher", "The travelling painter", "A busy clerk",
)
VERBS = ("carried", "painted", "found", "repaired", "sold", "watched", "counted", "borrowed", "cleaned", "hid")
OBJECTS = (
    "a wooden chair", "the blue kettle", "three apples", "an old map", "the broken clock",
    "a basket of eggs", "the heavy door", "some red ribbons", "a glass bottle", "the small boat",
)
PLACES = (
    "near the river", "in the market", "behind the church", "at the station", "on the hill",
    "by the old bridge", "in the garden", "under the bridge", "at the harbour", "in the library",
)
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
THINGS = ("door", "box", "car", "house", "bag", "gate", "boat", "book")


@dataclass(frozen=True)
class RetrievalSample:
    """One prompt of the suite.

    Attributes:
        task: ``"passkey"`` (one 5-digit key) or ``"multifact"`` (several 4-digit codes, one asked).
        length: target context length in tokens (the haystack is filled up to it).
        depth: where the asked fact sits in the haystack, 0 (start) to 1 (end).
        context: instruction, haystack and facts; halted tokens come from here.
        question: the question and the start of the answer sentence.
        answer: the expected number, as digits.
    """

    task: TaskName
    length: int
    depth: float
    context: str
    question: str
    answer: str

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], int]:
        """Token ids of context then question (tokenized apart, so the split is exact), and the
        question's length in tokens."""
        return split_prompt_ids(tokenizer, self.context, self.question)

    def is_correct(self, generated: str) -> bool:
        """Exact match: the first number in the generated text is the answer."""
        found = re.search(r"\d+", generated)
        return found is not None and found.group() == self.answer

    def score(self, generated: str) -> float:
        return float(self.is_correct(generated))


def haystack(rng: random.Random, tokenizer: PreTrainedTokenizerBase, tokens: int) -> list[str]:
    """Generated sentences adding up to about ``tokens`` tokens (each counted with its leading space)."""
    sentences: list[str] = []
    total = 0
    while total < tokens:
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."
        sentences.append(sentence)
        total += len(tokenizer(" " + sentence, add_special_tokens=False).input_ids)
    return sentences


def insert_at(sentences: list[str], depth: float, fact: str) -> None:
    """Put ``fact`` between sentences at fraction ``depth`` of the haystack."""
    sentences.insert(round(depth * len(sentences)), fact)


def passkey_sample(rng: random.Random, tokenizer: PreTrainedTokenizerBase, length: int, depth: float) -> RetrievalSample:
    key = str(rng.randint(10000, 99999))
    fact = f"The pass key is {key}. Remember it. {key} is the pass key."
    sentences = haystack(rng, tokenizer, length - len(tokenizer(INSTRUCTION + fact).input_ids))
    insert_at(sentences, depth, fact)
    return RetrievalSample(
        "passkey", length, depth, INSTRUCTION + " ".join(sentences), "\nWhat is the pass key? The pass key is", key
    )


def multifact_sample(
    rng: random.Random, tokenizer: PreTrainedTokenizerBase, length: int, depth: float, facts: int = 4
) -> RetrievalSample:
    """``facts`` codes of distinct coloured things spread over the haystack; the one asked about
    sits at ``depth``, the others at random depths."""
    names = [f"{colour} {thing}" for colour, thing in zip(rng.sample(COLOURS, facts), rng.sample(THINGS, facts))]
    codes = [str(rng.randint(1000, 9999)) for _ in names]
    statements = [f"The code of the {name} is {code}." for name, code in zip(names, codes)]
    budget = length - len(tokenizer(INSTRUCTION + " ".join(statements)).input_ids)
    sentences = haystack(rng, tokenizer, budget)
    for statement in statements[1:]:
        insert_at(sentences, rng.random(), statement)
    insert_at(sentences, depth, statements[0])
    question = f"\nWhat is the code of the {names[0]}? The code of the {names[0]} is"
    return RetrievalSample("multifact", length, depth, INSTRUCTION + " ".join(sentences), question, codes[0])


def retrieval_suite(
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[str, ...] = TASKS,
    lengths: tuple[int, ...] = (1024, 2048, 4096, 7680),
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0),
    per_cell: int = 2,
    seed: int = 0,
) -> list[RetrievalSample]:
    """``per_cell`` samples for every (task, length, depth), reproducible from ``seed``.

    Raises:
        ValueError: on an unknown task, a depth outside [0, 1] or a non-positive length.
    """
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"tasks must be among {TASKS}, got {sorted(unknown)}")
    if any(not 0.0 <= depth <= 1.0 for depth in depths):
        raise ValueError(f"depths must be in [0, 1], got {depths}")
    if any(length < 1 for length in lengths):
        raise ValueError(f"lengths must be positive token counts, got {lengths}")
    rng = random.Random(seed)
    builders = {"passkey": passkey_sample, "multifact": multifact_sample}
    return [
        builders[task](rng, tokenizer, length, depth)
        for task in tasks for length in lengths for depth in depths for _ in range(per_cell)
    ]

"""Prompts for ``dash-vl diagnose``: the user's text files or images, or a built-in suite.

Each prompt is the model input of one unpadded prompt (batch 1) on the model's device:
``{"input_ids": (1, T)}`` for text, the processor's whole output for a VLM.

Built-in suites: ``passkey`` (:mod:`dash_vl.suites.retrieval`, context and question as the accuracy
runs tokenize them), ``code`` (:mod:`dash_vl.suites.code_completion`'s LCC-style files) and ``scenes``
(held-out questions of :mod:`dash_vl.suites.scenes` about one rendered scene each, with the scenes
model's post-prompt, through the chat template).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from dash_vl.api import Query, VisionLanguageModel
from dash_vl.suites.code_completion import code_suite
from dash_vl.suites.retrieval import RetrievalSample, retrieval_suite
from dash_vl.suites.scenes import balanced_questions
from dash_vl.weights.scenes_vlm import POST_PROMPT

Prompt = dict[str, torch.Tensor]
SUITES: tuple[str, ...] = ("passkey", "code", "scenes")
PASSKEY_DEPTHS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def token_prompt(ids: Sequence[int], device: torch.device) -> Prompt:
    return {"input_ids": torch.tensor([list(ids)], device=device)}


def text_prompts(tokenizer: PreTrainedTokenizerBase, paths: Sequence[str | Path], device: torch.device) -> list[Prompt]:
    """One prompt per text file, tokenized as it is (the tokenizer's special tokens added).

    Raises:
        ValueError: for an empty file.
    """
    prompts = []
    for path in paths:
        ids = tokenizer(Path(path).read_text()).input_ids
        if not ids:
            raise ValueError(f"{path} holds no tokens")
        prompts.append(token_prompt(ids, device))
    return prompts


def passkey_samples(tokenizer: PreTrainedTokenizerBase, count: int, length: int, seed: int = 0) -> list[RetrievalSample]:
    """``count`` pass-key samples of about ``length`` tokens, the key at depths cycling 0, 0.25, ..., 1."""
    per_depth = math.ceil(count / len(PASSKEY_DEPTHS))
    suite = retrieval_suite(tokenizer, ("passkey",), (length,), PASSKEY_DEPTHS, per_depth, seed)
    cycled = sorted(range(len(suite)), key=lambda index: (index % per_depth, index // per_depth))
    return [suite[index] for index in cycled[:count]]


def passkey_prompts(tokenizer: PreTrainedTokenizerBase, count: int, length: int, device: torch.device, seed: int = 0) -> list[Prompt]:
    """The prompts of :func:`passkey_samples`."""
    return [token_prompt(sample.prompt_ids(tokenizer)[0], device) for sample in passkey_samples(tokenizer, count, length, seed)]


def code_prompts(tokenizer: PreTrainedTokenizerBase, count: int, length: int, device: torch.device, seed: int = 0) -> list[Prompt]:
    """``count`` LCC-style prompts (the head of one standard-library file) of about ``length`` tokens."""
    return [
        token_prompt(sample.prompt_ids(tokenizer)[0], device)
        for sample in code_suite(tokenizer, ("lcc",), (length,), count, seed)
    ]


def scene_prompts(vlm: VisionLanguageModel, count: int, seed: int = 0) -> list[Prompt]:
    """``count`` held-out scene questions (kinds balanced), one rendered scene each."""
    return [
        dict(vlm.prepare([Query(question.question + POST_PROMPT, (scene.render(),))]))
        for scene, question in balanced_questions("heldout", seed, count)
    ]


def image_prompts(vlm: VisionLanguageModel, images: Sequence[str], question: str) -> list[Prompt]:
    """One prompt: ``question`` about ``images`` (paths or URLs, :func:`dash_vl.media.open_image`)."""
    return [dict(vlm.prepare([Query(question, tuple(images))]))]

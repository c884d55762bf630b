"""Tiny random Qwen2-VL models and prompts, built offline from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dash_vl.random_models import random_qwen2_vl, tiny_qwen2_vl_config, tiny_qwen2_vl_processor

QUESTIONS = ("What colour is the square in the middle?", "How many?")


def random_image(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def processor():
    return tiny_qwen2_vl_processor()


@pytest.fixture(scope="session", params=["sdpa", "eager"])
def model(request, processor):
    return random_qwen2_vl(tiny_qwen2_vl_config(processor.tokenizer), attn_implementation=request.param)


@pytest.fixture(scope="session")
def sdpa_model(processor):
    return random_qwen2_vl(tiny_qwen2_vl_config(processor.tokenizer), attn_implementation="sdpa")


def vl_inputs(processor, batch: int) -> dict:
    """``batch`` chat prompts, one image each of different sizes, left-padded."""
    texts, images = [], []
    for sample in range(batch):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[sample]}]}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        images.append(random_image(sample, (112 + 56 * sample, 112)))
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True))


@pytest.fixture(params=[1, 2], ids=["batch1", "batch2-left-padded"])
def inputs(request, processor):
    return vl_inputs(processor, request.param)

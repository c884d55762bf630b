"""Tiny random VLMs of every family and their prompts (images, several images, video), built offline."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from PIL import Image
from torch import nn

from dash_vl.testing import FAMILIES, random_model, takes_video, tiny_config, tiny_processor

ALL_FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
RECURRENT_FAMILIES: tuple[str, ...] = ("qwen3_5",)
"""Families with linear-attention (recurrent) layers: a mask cannot take a token out of a recurrence, so the
masking reference does not cover them; their matrix is ``tests/engine/test_engine_qwen3_5.py``."""
OWN_SUITE_FAMILIES: tuple[str, ...] = ("qwen3_vl", *RECURRENT_FAMILIES)
"""Families with a lean suite of their own (``tests/engine/test_engine_<family>.py``: every prompt shape with
DASH and FastV, every method once) instead of a row in each matrix below, which would cost CI minutes."""
FAMILY_NAMES: tuple[str, ...] = tuple(name for name in ALL_FAMILY_NAMES if name not in OWN_SUITE_FAMILIES)
"""The families the shared matrices (engine, methods, stages, packing, encoder) run on."""
QUESTIONS = ("What colour is the square in the middle?", "How many?")
PROMPT_KINDS = ("image", "multi_image", "video")


REPRESENTATIVE_AXES = ("family", "method")
"""The contributor's loop (``python -m pytest -m "not slow"``) runs, of each parametrised test, the first case
not already slow for every value of each of these parameters (every family once, every method once; not their
product); the rest of its product (other prompt shapes, ratios, kernels, scopes, batches, and the families ×
methods cross) is marked slow at collection. CI runs every case."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the cases of a parametrised test beyond its representative ones (:data:`REPRESENTATIVE_AXES`) slow."""
    representatives = set()
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or item.get_closest_marker("slow"):
            continue
        test = item.nodeid.split("[")[0]
        cases = {(test, axis, repr(callspec.params.get(axis))) for axis in REPRESENTATIVE_AXES}
        if cases <= representatives:
            item.add_marker(pytest.mark.slow)
        representatives |= cases


def family_kinds(kinds: tuple[str, ...], families: tuple[str, ...] = FAMILY_NAMES) -> list[tuple[str, str]]:
    """``(family, kind)`` for every family and each of ``kinds`` its model takes (no video for LLaVA-1.5, LLaVA-NeXT)."""
    return [(family, kind) for family in families for kind in kinds if kind != "video" or takes_video(family)]


def skip_unless_taken(family: str, kind: str) -> None:
    """Skip a test of a ``kind`` prompt on a family whose model does not take it (videos on LLaVA-1.5, LLaVA-NeXT)."""
    if kind == "video" and not takes_video(family):
        pytest.skip(f"{FAMILIES[family].MODEL_CLASS.__name__} takes no video")


def random_image(seed: int, size: tuple[int, int]) -> Image.Image:
    pixels = np.random.RandomState(seed).randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def video_frames(seed: int, count: int = 4, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """``(count, height, width, 3)`` uint8 random frames."""
    return np.stack([np.asarray(random_image(seed * 100 + frame, size)) for frame in range(count)])


@cache
def processor_of(family: str):
    return tiny_processor(family)


@cache
def model_of(family: str, attn_implementation: str) -> nn.Module:
    return random_model(tiny_config(family, processor_of(family).tokenizer), attn_implementation=attn_implementation)


def vl_inputs(processor, batch: int, kind: str = "image", first: int = 0) -> dict:
    """``batch`` chat prompts, left-padded: one image each (``"image"``, sizes differ per sample),
    two images each (``"multi_image"``) or a 4-frame video each (``"video"``). Samples are numbered
    from ``first``: ``vl_inputs(p, 1, kind, first=b)`` is sample ``b`` of a larger batch alone."""
    texts, images, videos = [], [], []
    for sample in range(first, first + batch):
        if kind == "image":
            media = [random_image(sample, (112 + 56 * sample, 112))]
        elif kind == "multi_image":
            media = [random_image(sample, (100, 60)), random_image(10 + sample, (56, 84))]
        else:
            media = []
            videos.append(video_frames(sample))
        content = [{"type": "image"} for _ in media] + ([{"type": "video"}] if kind == "video" else [])
        content.append({"type": "text", "text": QUESTIONS[sample]})
        messages = [{"role": "user", "content": content}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        images.append(media)
    return dict(
        processor(
            text=texts, images=images if kind != "video" else None, videos=videos or None, return_tensors="pt", padding=True
        )
    )


@pytest.fixture(scope="session")
def processor():
    return processor_of("qwen2_vl")


@pytest.fixture(scope="session", params=["sdpa", "eager"])
def model(request):
    return model_of("qwen2_vl", request.param)


@pytest.fixture(scope="session")
def sdpa_model():
    return model_of("qwen2_vl", "sdpa")


@pytest.fixture(params=[1, 2], ids=["batch1", "batch2-left-padded"])
def inputs(request, processor):
    return vl_inputs(processor, request.param)


def four_image_prompt() -> dict:
    """One Qwen2-VL prompt with four 224 x 224 images: 4 x 64 = 256 visual tokens."""
    processor = processor_of("qwen2_vl")
    content = [{"type": "image"}] * 4 + [{"type": "text", "text": "Which image is brightest?"}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    images = [random_image(seed, (224, 224)) for seed in range(4)]
    return dict(processor(text=[text], images=[images], return_tensors="pt"))

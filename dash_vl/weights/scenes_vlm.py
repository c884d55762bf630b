"""The small Qwen2-VL that ships with dash_vl, trained on the synthetic scenes of :mod:`dash_vl.suites.scenes`.

It is a test bed for halting on trained weights, not a benchmark model: a real
``Qwen2VLForConditionalGeneration`` (M-RoPE, ViT with 14-pixel patches, 2 × 2 merger) of
3.52 M parameters (14 MB of fp32 safetensors), with a byte-level BPE tokenizer learnt offline from the scene
questions and Qwen2-VL's special vision tokens. Its processor resizes images to at most
448 × 448 pixels (256 visual tokens). ``eval/train_scenes_vlm.py`` builds and trains it;
the trained folder ships in the package at :data:`SHIPPED_DIRECTORY` and loads with
``dash_vl.load("dash-vl/scenes")`` from any working directory (or ``from_pretrained(SHIPPED_DIRECTORY)``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

from dash_vl.model_source import SCENES_DIRECTORY
from dash_vl.suites.scenes import COLOURS, IMAGE_SIZE, NUMBERS, SHAPES, WORDS, scene_questions
from dash_vl.testing import qwen2_vl
from dash_vl.testing.tokenizer import bpe_tokenizer

SHIPPED_DIRECTORY: Path = SCENES_DIRECTORY
VOCAB_SIZE = 640
POST_PROMPT = " Answer with one word."
TEXT: dict[str, Any] = dict(
    hidden_size=192, intermediate_size=384, num_hidden_layers=8, num_attention_heads=6, num_key_value_heads=2,
    max_position_embeddings=4096, rms_norm_eps=1e-6,
)
VISION: dict[str, Any] = dict(depth=4, embed_dim=96, hidden_size=TEXT["hidden_size"], num_heads=4, mlp_ratio=4)
MROPE_SECTION = (4, 6, 6)  # head size 32: 16 rotary pairs split over time, height, width


def tokenizer_corpus(scenes: int = 4000) -> Iterator[str]:
    """Text the tokenizer learns its merges from: the questions of ``scenes`` training scenes with
    and without :data:`POST_PROMPT`, every answer word, and the chat roles."""
    for index in range(scenes):
        for question in scene_questions("train", 0, index)[1]:
            yield question.question
            yield question.question + POST_PROMPT
    yield from (*COLOURS, *SHAPES, *WORDS, *NUMBERS, "left", "right", "above", "below", "yes", "no")
    yield from ("user\n", "assistant\n", "system\n", "You are a helpful assistant.")


def build_processor(scenes: int = 4000) -> Qwen2VLProcessor:
    """The Qwen2-VL processor of the scenes model: real image/video processing (56²–448² pixels),
    a BPE of at most :data:`VOCAB_SIZE` tokens learnt from :func:`tokenizer_corpus`, the ChatML template."""
    tokenizer = bpe_tokenizer(tokenizer_corpus(scenes), VOCAB_SIZE, qwen2_vl.SPECIAL_TOKENS)
    return qwen2_vl.tiny_processor(max_pixels=IMAGE_SIZE * IMAGE_SIZE, tokenizer=tokenizer)


def untrained_model(processor: Qwen2VLProcessor, seed: int = 0) -> Qwen2VLForConditionalGeneration:
    """The scenes model's architecture (:data:`TEXT`, :data:`VISION`) with seeded random fp32 weights."""
    tokenizer = processor.tokenizer
    pad_id, eos_id = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    text = dict(TEXT, vocab_size=len(tokenizer), eos_token_id=eos_id, pad_token_id=pad_id, bos_token_id=pad_id)
    config = qwen2_vl.tiny_config(tokenizer, text, vision=VISION, mrope_section=MROPE_SECTION)
    config._attn_implementation = config.text_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return Qwen2VLForConditionalGeneration(config)


def shipped_model_directory() -> Path:
    """:data:`SHIPPED_DIRECTORY`, checked to hold the trained weights.

    Raises:
        FileNotFoundError: if the package was installed without its model files.
    """
    if not (SHIPPED_DIRECTORY / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the shipped scenes model is missing from {SHIPPED_DIRECTORY}; reinstall dash-vl or retrain it "
            "with eval/train_scenes_vlm.py"
        )
    return SHIPPED_DIRECTORY

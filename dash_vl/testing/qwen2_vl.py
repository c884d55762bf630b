"""Qwen2-VL from configuration values: a tiny one with a real processor, and Qwen2-VL-7B's shapes."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from dash_vl import hf_compat
from dash_vl.testing.prompts import TEXT_AROUND, random_text
from dash_vl.testing.shapes import qwen2_7b_text
from dash_vl.testing.tokenizer import byte_level_tokenizer, chat_template, token_ids

MODEL_CLASS = Qwen2VLForConditionalGeneration

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
)

TEXT_7B_FIELDS: dict[str, Any] = dict(
    vocab_size=152064, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
)
VISION_7B: dict[str, Any] = dict(
    depth=32, embed_dim=1280, hidden_size=3584, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2
)


def tiny_processor(
    processor_class: type = Qwen2VLProcessor,
    min_pixels: int = 56 * 56,
    max_pixels: int = 224 * 224,
    tokenizer: PreTrainedTokenizerFast | None = None,
    patch_size: int = 14,
) -> Any:
    """The real Qwen2-VL image and video processors and chat layout with ``tokenizer`` (default: a
    byte-level one holding :data:`SPECIAL_TOKENS`); images are resized to ``min_pixels``–``max_pixels``
    and cut into ``patch_size`` patches."""
    sizes = dict(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    return processor_class(
        image_processor=Qwen2VLImageProcessorPil(**sizes),
        tokenizer=tokenizer or byte_level_tokenizer(SPECIAL_TOKENS),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        chat_template=chat_template(
            "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
        ),
    )


def tiny_config(
    tokenizer: Any,
    text: dict[str, Any],
    config_class: type = Qwen2VLConfig,
    vision: dict[str, Any] | None = None,
    mrope_section: tuple[int, int, int] = (2, 3, 3),
) -> Any:
    """A Qwen2-VL (or ``config_class``) with the ``text`` shapes, a 2-block ViT and merger (or
    ``vision``), special ids from ``tokenizer``; ``mrope_section`` (temporal, height, width rotary
    pairs) must sum to half the head size (default: head size 16), unless ``text`` brings its own
    ``rope_parameters``."""
    ids = token_ids(tokenizer, SPECIAL_TOKENS)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": list(mrope_section)}
    text = {"rope_parameters": rope, **text}
    vision = vision or dict(depth=2, embed_dim=32, hidden_size=text["hidden_size"], num_heads=4, mlp_ratio=2)
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def full_size_config(num_layers: int | None = None) -> Qwen2VLConfig:
    """Qwen2-VL-7B-Instruct's shapes (optionally fewer layers)."""
    return Qwen2VLConfig(text_config=qwen2_7b_text(num_layers, **TEXT_7B_FIELDS), vision_config=VISION_7B)


def long_prompt(
    config: Any, length: int, device: torch.device, dtype: torch.dtype, model_class: type = MODEL_CLASS
) -> dict[str, torch.Tensor]:
    """Inputs of ``model_class`` (batch 1) for one image of about ``length - 130`` visual tokens
    between two 64-token texts: random ``pixel_values`` with a real ``image_grid_thw``, so the
    ViT's work and the M-RoPE ids are those of such an image."""
    vision = config.vision_config
    merge = vision.spatial_merge_size
    patch_features = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    visual = max(1, length - 2 * TEXT_AROUND - 2)
    rows = math.isqrt(visual)
    cols = visual // rows
    tokens = rows * cols
    generator = torch.Generator(device=device).manual_seed(length)
    text = lambda: random_text(TEXT_AROUND, config.vision_start_token_id, generator)  # noqa: E731
    ids = torch.cat([
        text(), torch.tensor([config.vision_start_token_id], device=device),
        torch.full((tokens,), config.image_token_id, device=device),
        torch.tensor([config.vision_end_token_id], device=device), text(),
    ])[None]
    return dict(
        **hf_compat.token_type_inputs(model_class, ids, config.image_token_id), input_ids=ids, attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(tokens * merge**2, patch_features, device=device, generator=generator).to(dtype),
        image_grid_thw=torch.tensor([[1, merge * rows, merge * cols]], device=device),
    )

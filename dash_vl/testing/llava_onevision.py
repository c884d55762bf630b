"""LLaVA-OneVision from configuration values: a tiny one with a real processor, and the 7B's shapes.

The tiny processor keeps the real anyres tiling (a base view plus crops from
``image_grid_pinpoints``, with image-newline features), multi-image prompts and video frames.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
)
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from dash_vl.testing.prompts import frames_fitting, video_inputs
from dash_vl.testing.shapes import qwen2_7b_text
from dash_vl.testing.tokenizer import byte_level_tokenizer, chat_template, token_ids

MODEL_CLASS = LlavaOnevisionForConditionalGeneration

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")
TILE = 56
PATCH = 14
PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]

TEXT_7B_FIELDS: dict[str, Any] = dict(model_type="qwen2", vocab_size=152128, rope_theta=1000000.0)
VISION_SO400M: dict[str, Any] = dict(
    model_type="siglip_vision_model",
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=26,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
)


def tiny_processor() -> LlavaOnevisionProcessor:
    """The real LLaVA-OneVision image (anyres) and video processors with 56-px tiles and a byte-level tokenizer."""
    tile = {"height": TILE, "width": TILE}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size=tile, image_grid_pinpoints=PINPOINTS),
        tokenizer=byte_level_tokenizer(SPECIAL_TOKENS),
        video_processor=LlavaOnevisionVideoProcessor(size=tile),
        num_image_tokens=(TILE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=chat_template("<image>\n", "<video>\n"),
    )


def tiny_config(tokenizer: Any, text: dict[str, Any]) -> LlavaOnevisionConfig:
    """A LLaVA-OneVision with a Qwen2 language model of the ``text`` shapes and a 2-layer SigLIP."""
    ids = token_ids(tokenizer, SPECIAL_TOKENS)
    vision = dict(
        model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=TILE, patch_size=PATCH,
    )
    return LlavaOnevisionConfig(
        text_config=dict(text, model_type="qwen2"),
        vision_config=vision,
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=PINPOINTS,
    )


def full_size_config(num_layers: int | None = None) -> LlavaOnevisionConfig:
    """llava-onevision-qwen2-7b-ov-hf's shapes (Qwen2-7B, SigLIP so400m at 384 px), optionally fewer layers."""
    return LlavaOnevisionConfig(text_config=qwen2_7b_text(num_layers, **TEXT_7B_FIELDS), vision_config=VISION_SO400M, vision_feature_select_strategy="full")


def frame_tokens(config: LlavaOnevisionConfig) -> int:
    """Visual tokens of one video frame: its SigLIP view's features pooled 2 x 2 (196 at 384 px)."""
    vision = config.vision_config
    return math.ceil(vision.image_size // vision.patch_size / 2) ** 2


def long_video_prompt(config: LlavaOnevisionConfig, frames: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inputs (batch 1) for one video of ``frames`` frames between two 64-token texts, as the
    processor lays a video out: ``frames * 196 + 1`` ``<video>`` placeholders at 384 px (each
    frame one SigLIP view of 27 x 27 = 729 patches, pooled 2 x 2 to 14 x 14 tokens; one
    image-newline token after the video) and ``pixel_values_videos`` ``(1, frames, 3, 384, 384)``
    of random pixels. 32 frames: 6 273 visual tokens (23 328 ViT patches), 6 401 prompt tokens."""
    vision = config.vision_config
    visual = frames * frame_tokens(config) + 1
    return video_inputs(
        lambda text: [torch.full((visual,), config.video_token_id, device=device)],
        min(config.image_token_id, config.video_token_id),
        "pixel_values_videos", (1, frames, vision.num_channels, vision.image_size, vision.image_size), device, dtype, frames,
    )


def long_prompt(config: LlavaOnevisionConfig, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """:func:`long_video_prompt` with as many frames as fit about ``length`` tokens."""
    frames = frames_fitting(length, lambda count: count * frame_tokens(config) + 1)
    return long_video_prompt(config, frames, device, dtype)

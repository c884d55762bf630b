"""LLaVA-1.5 from configuration values: a tiny one with a real processor, and llava-1.5-7b-hf's shapes.

The tiny processor is LLaVA's own (CLIP resize and centre crop to one square view, one
``<image>`` placeholder per patch: the ``[CLS]`` token is left out, ``vision_feature_select_strategy
= "default"``); the tower is a CLIP ViT with a ``[CLS]`` token whose second-to-last layer feeds
the projector, as in the checkpoint. Images only: LLaVA-1.5 takes no video.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from dash_vl.testing.prompts import TEXT_AROUND, random_text
from dash_vl.testing.tokenizer import byte_level_tokenizer, chat_template, token_ids

MODEL_CLASS = LlavaForConditionalGeneration
TAKES_VIDEO = False

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")
TILE = 84
PATCH = 14

LLAMA2_7B_TEXT: dict[str, Any] = dict(
    model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5, vocab_size=32064,
)
"""Vicuna-7B v1.5 (Llama-2-7B shapes), LLaVA-1.5-7B's language model; the window is 4 096 tokens,
raised for the timing prompts (speed does not depend on it)."""
CLIP_VIT_L_336: dict[str, Any] = dict(
    model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
)
"""CLIP ViT-L/14 at 336 px: 24 x 24 = 576 patches and a ``[CLS]`` token."""


def tiny_vision() -> dict[str, Any]:
    """A 2-layer CLIP tower of width 32 on :data:`TILE`-px images (the families' tiny towers)."""
    return dict(
        model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, image_size=TILE, patch_size=PATCH,
    )


def tiny_processor() -> LlavaProcessor:
    """LLaVA's processor with an 84-px CLIP view (36 placeholders an image) and a byte-level tokenizer."""
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}),
        tokenizer=byte_level_tokenizer(SPECIAL_TOKENS),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>\n", ""),
    )


def tiny_config(tokenizer: Any, text: dict[str, Any]) -> LlavaConfig:
    """A LLaVA-1.5 with a Llama language model of the ``text`` shapes and a 2-layer CLIP tower."""
    return LlavaConfig(
        text_config=dict(text, model_type="llama"),
        vision_config=tiny_vision(),
        image_token_index=token_ids(tokenizer, SPECIAL_TOKENS)["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def full_size_config(num_layers: int | None = None) -> LlavaConfig:
    """llava-1.5-7b-hf's shapes (Vicuna-7B, CLIP ViT-L/14-336, feature layer -2), optionally fewer layers."""
    text = dict(LLAMA2_7B_TEXT, max_position_embeddings=32768)
    if num_layers:
        text["num_hidden_layers"] = num_layers
    return LlavaConfig(text_config=text, vision_config=CLIP_VIT_L_336, vision_feature_layer=-2, vision_feature_select_strategy="default")


def image_tokens(config: LlavaConfig) -> int:
    """Placeholders of one image: its patches, ``[CLS]`` left out (576 at 336 px)."""
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


def long_prompt(config: LlavaConfig, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inputs (batch 1): 64 random text tokens, as many images as fit about ``length`` tokens (576
    placeholders each at 336 px: 28 images, 16 128 visual tokens, for 16 384), 64 text tokens;
    ``pixel_values`` ``(images, 3, 336, 336)`` of random pixels."""
    vision, per_image = config.vision_config, image_tokens(config)
    images = max(1, (length - 2 * TEXT_AROUND) // per_image)
    generator = torch.Generator(device=device).manual_seed(images)
    text = [random_text(TEXT_AROUND, config.image_token_id, generator) for _ in range(2)]
    ids = torch.cat([text[0], torch.full((images * per_image,), config.image_token_id, device=device), text[1]])[None]
    pixels = torch.randn(images, vision.num_channels, vision.image_size, vision.image_size, device=device, generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels.to(dtype)}

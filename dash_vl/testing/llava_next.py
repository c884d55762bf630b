"""LLaVA-NeXT (LLaVA-1.6) from configuration values: a tiny one with a real processor, and
llava-v1.6-mistral-7b-hf's shapes.

The tiny processor keeps LLaVA-NeXT's real anyres tiling (a base view plus crops from
``image_grid_pinpoints``, unpadded, an image-newline feature after every row of crop
features) on 56-px CLIP tiles with a ``[CLS]`` token; the language model is Mistral, as in the
checkpoint. Images only: ``LlavaNextForConditionalGeneration`` takes no video.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from dash_vl.testing.llava import CLIP_VIT_L_336, LLAMA2_7B_TEXT, PATCH, SPECIAL_TOKENS, tiny_vision
from dash_vl.testing.prompts import TEXT_AROUND, random_text
from dash_vl.testing.tokenizer import byte_level_tokenizer, chat_template, token_ids

MODEL_CLASS = LlavaNextForConditionalGeneration
TAKES_VIDEO = False

TILE = 56
PINPOINTS = [[TILE, TILE], [TILE, 2 * TILE], [2 * TILE, TILE], [2 * TILE, 2 * TILE]]

MISTRAL_7B_TEXT: dict[str, Any] = dict(
    LLAMA2_7B_TEXT, model_type="mistral", intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=32768,
    rope_theta=1000000.0, sliding_window=None,
)
"""Mistral-7B-Instruct v0.2's shapes (no sliding window, rotary base 10^6), LLaVA-NeXT-Mistral-7B's language model."""
PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def tiny_processor() -> LlavaNextProcessor:
    """LLaVA-NeXT's processor with 56-px tiles (pinpoints up to 112 x 112) and a byte-level tokenizer."""
    tile = {"height": TILE, "width": TILE}
    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": TILE}, crop_size=tile, image_grid_pinpoints=PINPOINTS),
        tokenizer=byte_level_tokenizer(SPECIAL_TOKENS),
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template("<image>\n", ""),
    )


def tiny_config(tokenizer: Any, text: dict[str, Any]) -> LlavaNextConfig:
    """A LLaVA-NeXT with a Mistral language model of the ``text`` shapes (no sliding window) and a 2-layer CLIP tower."""
    return LlavaNextConfig(
        text_config=dict(text, model_type="mistral", sliding_window=None),
        vision_config=dict(tiny_vision(), image_size=TILE),
        image_token_index=token_ids(tokenizer, SPECIAL_TOKENS)["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=PINPOINTS,
    )


def full_size_config(num_layers: int | None = None) -> LlavaNextConfig:
    """llava-v1.6-mistral-7b-hf's shapes (Mistral-7B, CLIP ViT-L/14-336, pinpoints up to 672 x 672
    and 1008 x 336), optionally fewer layers."""
    text = dict(MISTRAL_7B_TEXT, num_hidden_layers=num_layers or MISTRAL_7B_TEXT["num_hidden_layers"])
    return LlavaNextConfig(
        text_config=text, vision_config=CLIP_VIT_L_336, vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_grid_pinpoints=PINPOINTS_336,
    )


def square_image_tokens(config: LlavaNextConfig) -> int:
    """Placeholders of one square image of twice the tile side (2 x 2 crops, nothing unpadded): the
    base view's patches, then 2s rows of 2s crop features and a newline each (s patches a tile side;
    2 928 at 336 px)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return side * side + 2 * side * (2 * side + 1)


def long_prompt(config: LlavaNextConfig, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inputs (batch 1): 64 random text tokens, as many square images of twice the tile side (five
    tiles each: the base view and 2 x 2 crops) as fit ``length`` tokens, then random text up to
    ``length`` tokens (at least 64). At 336 px an image is 2 928 placeholders: for 16 384 tokens,
    five images (14 640 visual tokens, 14 400 of them patches, 25 CLIP tiles)."""
    vision, per_image = config.vision_config, square_image_tokens(config)
    images = max(1, (length - 2 * TEXT_AROUND) // per_image)
    generator = torch.Generator(device=device).manual_seed(images)
    after = max(TEXT_AROUND, length - TEXT_AROUND - images * per_image)
    ids = torch.cat([
        random_text(TEXT_AROUND, config.image_token_id, generator),
        torch.full((images * per_image,), config.image_token_id, device=device),
        random_text(after, config.image_token_id, generator),
    ])[None]
    side = 2 * vision.image_size
    pixels = torch.randn(images, 5, vision.num_channels, vision.image_size, vision.image_size, device=device, generator=generator)
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels.to(dtype),
        "image_sizes": torch.tensor([[side, side]] * images, device=device),
    }

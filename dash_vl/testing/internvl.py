"""InternVL (HF format) from configuration values: a tiny one with a real processor, and InternVL3-8B's shapes.

The tiny processor keeps the real dynamic tiling (``crop_to_patches``), the
``<img><IMG_CONTEXT>...</img>`` layout and ``FrameN:`` video prompts. The tiny language model
is Llama-style on purpose (InternVL3 uses Qwen2.5): the adapter must not assume one.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor, InternVLVideoProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from dash_vl.testing.prompts import frames_fitting, video_inputs
from dash_vl.testing.shapes import qwen2_7b_text
from dash_vl.testing.tokenizer import byte_level_tokenizer, chat_template, token_ids

MODEL_CLASS = InternVLForConditionalGeneration

NAMED_TOKENS: dict[str, str] = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *NAMED_TOKENS.values())
TILE = 56
PATCH = 14

TEXT_8B_FIELDS: dict[str, Any] = dict(model_type="qwen2", vocab_size=151674, rope_theta=1000000.0)
VISION_300M: dict[str, Any] = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=[448, 448], patch_size=[14, 14]
)


def tiny_processor() -> InternVLProcessor:
    """The real InternVL image (dynamic tiles, up to 4) and video processors with 56-px tiles, byte-level tokenizer."""
    tile = {"height": TILE, "width": TILE}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil(size=tile, crop_to_patches=True, min_patches=1, max_patches=4),
        tokenizer=byte_level_tokenizer(SPECIAL_TOKENS, NAMED_TOKENS),
        video_processor=InternVLVideoProcessor(size=tile),
        image_seq_length=(TILE // PATCH) ** 2 // 4,
        chat_template=chat_template("<IMG_CONTEXT>\n", "<video>\n"),
    )


def tiny_config(tokenizer: Any, text: dict[str, Any]) -> InternVLConfig:
    """An InternVL with a Llama-style language model of the ``text`` shapes and a 2-layer InternViT."""
    ids = token_ids(tokenizer, SPECIAL_TOKENS)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=[TILE, TILE], patch_size=[PATCH, PATCH],
    )
    return InternVLConfig(
        text_config=dict(text, model_type="llama"),
        vision_config=vision,
        image_token_id=ids["<IMG_CONTEXT>"],
        image_seq_length=(TILE // PATCH) ** 2 // 4,
        downsample_ratio=0.5,
    )


def full_size_config(num_layers: int | None = None) -> InternVLConfig:
    """InternVL3-8B-hf's shapes (Qwen2.5-7B, InternViT-300M at 448 px, 256 tokens a tile), optionally fewer layers."""
    return InternVLConfig(text_config=qwen2_7b_text(num_layers, **TEXT_8B_FIELDS), vision_config=VISION_300M, image_seq_length=256, downsample_ratio=0.5)


def frame_labels(frame: int, last: bool) -> tuple[int, int]:
    """Text tokens before and after frame ``frame``'s (from 0) context tokens in the processor's video
    text ``Frame1: <img>...</img>\nFrame2: <img>...</img>``, as Qwen2's tokenizer (InternVL3's)
    splits it: ``Frame``, one per digit, ``:``, `` ``, ``<img>`` before; ``</img>`` and, but after
    the last frame, ``\n`` after."""
    return 4 + len(str(frame + 1)), 1 + (not last)


def video_tokens(config: InternVLConfig, frames: int) -> int:
    """Tokens of a ``frames``-frame video's text (context tokens and labels)."""
    return sum(sum(frame_labels(frame, frame == frames - 1)) for frame in range(frames)) + frames * config.image_seq_length


def long_video_prompt(config: InternVLConfig, frames: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Inputs (batch 1) for one video of ``frames`` frames between two 64-token texts, laid out as the
    processor lays a video out: per frame its labels (:func:`frame_labels`, random text ids here)
    around ``image_seq_length`` ``<IMG_CONTEXT>`` tokens (256 at 448 px: InternViT's 32 x 32
    patches and ``[CLS]``, pixel-shuffled 2 x 2), each frame one tile of ``pixel_values``
    ``(frames, 3, 448, 448)`` of random pixels. 32 frames: 8 192 visual tokens (32 800 ViT
    patches), 8 566 prompt tokens."""
    vision, per_frame = config.vision_config, config.image_seq_length

    def video(text) -> list[torch.Tensor]:
        pieces = []
        for frame in range(frames):
            before, after = frame_labels(frame, frame == frames - 1)
            pieces += [text(before), torch.full((per_frame,), config.image_token_id, device=device), text(after)]
        return pieces

    return video_inputs(video, config.image_token_id, "pixel_values", (frames, vision.num_channels, *vision.image_size), device, dtype, frames)


def long_prompt(config: InternVLConfig, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """:func:`long_video_prompt` with as many frames as fit about ``length`` tokens."""
    return long_video_prompt(config, frames_fitting(length, lambda count: video_tokens(config, count)), device, dtype)

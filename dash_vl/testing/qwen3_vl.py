"""Qwen3-VL from configuration values: a tiny one with a real processor, and Qwen3-VL-8B's shapes.

The tiny processor is Qwen3-VL's own (16-px patches, a video's frames each between
``<|vision_start|>`` and ``<|vision_end|>`` after a ``<t seconds>`` timestamp); each of the tiny
ViT's three blocks feeds a DeepStack merger, so language layers 0, 1 and 2 receive visual features
beyond the input embeddings, as in the checkpoint (ViT blocks 8, 16, 24 into language layers 0, 1, 2).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor, Qwen3VLVideoProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from dash_vl.testing import qwen2_vl
from dash_vl.testing.tokenizer import byte_level_tokenizer, chat_template

MODEL_CLASS = Qwen3VLForConditionalGeneration
PATCH = 16

TEXT_8B: dict[str, Any] = dict(
    hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-6, vocab_size=151936,
    rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True},
)
"""Qwen3-VL-8B-Instruct's language model (Qwen3-8B shapes, interleaved M-RoPE)."""
VISION_8B: dict[str, Any] = dict(
    depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096, patch_size=PATCH,
    spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24],
)
"""Qwen3-VL-8B-Instruct's ViT: 27 blocks, DeepStack features from blocks 8, 16 and 24."""


def tiny_processor() -> Qwen3VLProcessor:
    """Qwen3-VL's processor (Qwen2-VL's image processor and Qwen3-VL's video processor at 16-px patches,
    64²–256² pixels an image) with a byte-level tokenizer."""
    sizes = dict(patch_size=PATCH, merge_size=2, temporal_patch_size=2)
    pixels = {"shortest_edge": 64 * 64, "longest_edge": 256 * 256}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(size=pixels, **sizes),
        tokenizer=byte_level_tokenizer(qwen2_vl.SPECIAL_TOKENS),
        video_processor=Qwen3VLVideoProcessor(size=pixels, do_sample_frames=False, **sizes),
        chat_template=chat_template(
            "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
        ),
    )


def tiny_config(tokenizer: Any, text: dict[str, Any]) -> Qwen3VLConfig:
    """A Qwen3-VL with the ``text`` shapes (head size 16, interleaved M-RoPE), a 3-block ViT whose blocks
    feed DeepStack into language layers 0, 1 and 2, special ids from ``tokenizer``."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    vision = dict(
        depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=text["hidden_size"], patch_size=PATCH,
        num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2],
    )
    return qwen2_vl.tiny_config(
        tokenizer, dict(text, head_dim=head_dim, rope_parameters=rope), config_class=Qwen3VLConfig, vision=vision
    )


def full_size_config(num_layers: int | None = None) -> Qwen3VLConfig:
    """Qwen3-VL-8B-Instruct's shapes (optionally fewer language layers)."""
    text = dict(TEXT_8B, num_hidden_layers=num_layers or TEXT_8B["num_hidden_layers"])
    return Qwen3VLConfig(text_config=text, vision_config=VISION_8B)


def long_prompt(config: Qwen3VLConfig, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Qwen2-VL's timing prompt (:func:`dash_vl.testing.qwen2_vl.long_prompt`: one image of about
    ``length - 130`` visual tokens) for this family."""
    return qwen2_vl.long_prompt(config, length, device, dtype, model_class=MODEL_CLASS)

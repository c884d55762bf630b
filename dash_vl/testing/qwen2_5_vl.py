"""Qwen2.5-VL from configuration values: Qwen2-VL's tokenizer, processors and M-RoPE with
Qwen2.5-VL's windowed-attention ViT; a tiny one and Qwen2.5-VL-7B's shapes."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

from dash_vl.testing import qwen2_vl
from dash_vl.testing.shapes import qwen2_7b_text

MODEL_CLASS = Qwen2_5_VLForConditionalGeneration

VISION_7B: dict[str, Any] = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
)


def tiny_processor() -> Qwen2_5_VLProcessor:
    """Qwen2-VL's real image and video processors in a ``Qwen2_5_VLProcessor``, byte-level tokenizer."""
    return qwen2_vl.tiny_processor(Qwen2_5_VLProcessor)


def tiny_config(tokenizer: Any, text: dict[str, Any]) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL with the ``text`` shapes and a 2-block windowed ViT (block 1 full attention)."""
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=text["hidden_size"],
        window_size=56, fullatt_block_indexes=[1],
    )
    return qwen2_vl.tiny_config(tokenizer, text, config_class=Qwen2_5_VLConfig, vision=vision)


def full_size_config(num_layers: int | None = None) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL-7B-Instruct's shapes (optionally fewer layers)."""
    return Qwen2_5_VLConfig(text_config=qwen2_7b_text(num_layers, **qwen2_vl.TEXT_7B_FIELDS), vision_config=VISION_7B)


def long_prompt(config: Qwen2_5_VLConfig, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Qwen2-VL's timing prompt (:func:`dash_vl.testing.qwen2_vl.long_prompt`) for this family."""
    return qwen2_vl.long_prompt(config, length, device, dtype, model_class=MODEL_CLASS)

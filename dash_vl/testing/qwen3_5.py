"""Qwen3.5 from configuration values: a tiny one with a real processor, and Qwen3.5-27B's shapes.

Qwen3.5's language model is hybrid: ``config.layer_types`` mixes gated-delta-net
``"linear_attention"`` layers with gated ``"full_attention"`` layers (one in every
``full_attention_interval``). The tiny model alternates them (interval 2), so both kinds sit at
and around the decision layers the tests use. Its processor is Qwen3-VL's (Qwen3.5 has none of
its own) on Qwen2-VL's image and video processors with 16-px patches and the byte-level
tokenizer; the engine's tests use images.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3VLProcessor

from dash_vl.testing import qwen2_vl

MODEL_CLASS = Qwen3_5ForConditionalGeneration

PATCH = 16

TEXT_27B: dict[str, Any] = dict(
    hidden_size=5120, intermediate_size=17408, num_hidden_layers=64, num_attention_heads=24, num_key_value_heads=4,
    head_dim=256, vocab_size=248320, rms_norm_eps=1e-6, max_position_embeddings=262144,
    linear_num_key_heads=16, linear_num_value_heads=48, linear_key_head_dim=128, linear_value_head_dim=128,
    linear_conv_kernel_dim=4,
    rope_parameters={
        "rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
        "mrope_section": [11, 11, 10], "mrope_interleaved": True,
    },
)
"""Qwen3.5-27B's language model: 64 layers of width 5120, MLP 17408, 24 query and 4 KV heads of 256,
a quarter of each head rotated (base 10^7), one full-attention layer in four; the gated-delta-net
layers have 16 key and 48 value heads of 128 (HF's ``Qwen3_5TextConfig`` default is 32 value heads)
and a 4-wide convolution. The values of ``Qwen/Qwen3.5-27B``'s ``config.json``."""


def tiny_processor() -> Qwen3VLProcessor:
    """Qwen3-VL's processor (Qwen3.5 has none of its own) on Qwen2-VL's image processor with 16-px
    patches, 32 x 32 to 256 x 256 px, and the byte-level tokenizer."""
    return qwen2_vl.tiny_processor(
        Qwen3VLProcessor, min_pixels=32 * 32, max_pixels=256 * 256, patch_size=PATCH,
    )


def tiny_config(tokenizer: Any, text: dict[str, Any]) -> Qwen3_5Config:
    """A Qwen3.5 with the ``text`` shapes (head size 16, half of it rotated, interleaved M-RoPE),
    linear and full attention alternating (2 key heads and 4 value heads of 16 in the linear
    layers, convolution window 4), and a 2-block ViT."""
    rope = {
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [2, 1, 1],
        "mrope_interleaved": True,
    }
    text = dict(
        text, head_dim=16, rope_parameters=rope, full_attention_interval=2, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
    )
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=text["hidden_size"],
        patch_size=PATCH, num_position_embeddings=64,
    )
    return qwen2_vl.tiny_config(tokenizer, text, config_class=Qwen3_5Config, vision=vision)


def full_size_config(num_layers: int | None = None) -> Qwen3_5Config:
    """Qwen3.5-27B's language-model shapes (:data:`TEXT_27B`, optionally fewer layers) with its vision
    tower, which is HF's default Qwen3.5 one (27 blocks of 1152, MLP 4304, 16 heads, 16-px patches, no
    DeepStack), projecting to 5120."""
    text = dict(TEXT_27B, num_hidden_layers=num_layers or TEXT_27B["num_hidden_layers"])
    return Qwen3_5Config(text_config=text, vision_config=dict(out_hidden_size=TEXT_27B["hidden_size"]))


def long_prompt(config: Qwen3_5Config, length: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Qwen2-VL's timing prompt (:func:`dash_vl.testing.qwen2_vl.long_prompt`) for this family: one image
    of about ``length - 130`` visual tokens."""
    return qwen2_vl.long_prompt(config, length, device, dtype, model_class=MODEL_CLASS)

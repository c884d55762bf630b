"""Qwen2-VL and Qwen2.5-VL (HF ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``).

Visual tokens are the ``<|image_pad|>`` and ``<|video_pad|>`` placeholders that the vision
merger's outputs replace. Rotary ids are the 3-D M-RoPE ids (temporal, height, width) that
the outer model computes; the engine gathers them per kept token, so kept tokens keep them.
"""

from __future__ import annotations

import torch
from torch import nn

from dash_vl.adapter import ModelAdapter


class Qwen2VLAdapter(ModelAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    auto_class = "AutoModelForImageTextToText"

    @property
    def text_model(self) -> nn.Module:
        return self.model.model.language_model

    @property
    def prompt_module(self) -> nn.Module:
        return self.model.model

    def rope_position_ids(
        self, position_ids: torch.Tensor | None, batch_size: int, seq_len: int, past_len: int, device: torch.device
    ) -> torch.Tensor:
        """``(3, batch, T)`` M-RoPE ids; the leading text-position row of ``(4, batch, T)`` ids is dropped."""
        position_ids = super().rope_position_ids(position_ids, batch_size, seq_len, past_len, device)
        if position_ids.ndim == 2:
            return position_ids[None].expand(3, -1, -1)
        if position_ids.shape[0] == 4:
            return position_ids[1:]
        return position_ids

    def visual_mask(self, input_ids: torch.Tensor | None, seq_len: int) -> torch.Tensor | None:
        if input_ids is None:
            return None
        config = self.model.config
        return (input_ids == config.image_token_id) | (input_ids == config.video_token_id)

"""Qwen2-VL and Qwen2.5-VL (HF ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``).

Visual tokens are the ``<|image_pad|>`` and ``<|video_pad|>`` placeholders that the vision
merger's outputs replace. Rotary ids are the 3-D M-RoPE ids (temporal, height, width) that
the outer model computes; the engine gathers them per kept token, so kept tokens keep them.
"""

from __future__ import annotations

import torch

from dash_vl.adapter import VisionLanguageAdapter
from dash_vl.media import FrameSampling


class Qwen2VLAdapter(VisionLanguageAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    video_sampling = FrameSampling("qwen", max_frames=64, fps=2.0)

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

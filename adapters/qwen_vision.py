"""The Qwen2-VL and Qwen2.5-VL vision towers (``model.model.visual``) for the encoder halting engine.

Both pack every patch of a call into one sequence ``(P, width)``; the merger folds each run of
``spatial_merge_size²`` consecutive patches into one language-model token. Qwen2-VL's blocks attend
within each frame (``cu_seqlens``); Qwen2.5-VL's attend within windows of a frame
(``cu_window_seqlens``), but within whole frames in its ``fullatt_block_indexes``, and run on the
patches reordered window by window (the merger's output is put back in raster order).
"""

from __future__ import annotations

from typing import Any

import torch

from dash_vl import hf_compat
from dash_vl.encoder_adapter import EncoderAdapter, EncoderLayout


def segment_units(bounds: torch.Tensor) -> torch.Tensor:
    """``(P,)`` long: the segment of each patch, for cumulative ``bounds`` ``(S + 1,)``."""
    lengths = (bounds[1:] - bounds[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=bounds.device), lengths)


class Qwen2VisionAdapter(EncoderAdapter):
    """Qwen2-VL's ViT: full attention within each frame (an image is one frame) in every block."""

    def layout(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, kwargs: dict[str, Any]) -> EncoderLayout:
        positions = hf_compat.qwen_vision_positions(self.tower, grid_thw, kwargs)
        frames = hf_compat.qwen_vision_frames(self.tower, grid_thw, kwargs)
        hidden = self.tower.patch_embed(pixel_values)
        rotary = self.tower.rotary_pos_emb(hidden, positions)
        return EncoderLayout(hidden, rotary, (frames,) * len(self.blocks), segment_units(frames))

    def block_arguments(
        self, segments: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, Any]:
        max_seqlen = hf_compat.vision_max_seqlen(segments, self.tower.config)
        return dict(cu_seqlens=segments, max_seqlen=max_seqlen, position_embeddings=position_embeddings)

    def output(self, hidden_states: torch.Tensor, layout: EncoderLayout) -> Any:
        merged = self.tower.merger(hidden_states)
        if layout.order is not None:
            merged = merged[torch.argsort(layout.order)]
        return hf_compat.vision_output(hidden_states, merged)


class Qwen2_5VisionAdapter(Qwen2VisionAdapter):
    """Qwen2.5-VL's ViT: window attention, full-frame attention in ``fullatt_block_indexes``; the patches
    run window by window (groups of ``spatial_merge_size²`` reordered by the window permutation)."""

    def layout(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, kwargs: dict[str, Any]) -> EncoderLayout:
        tower = self.tower
        order, windows = hf_compat.qwen2_5_vl_windows(tower, grid_thw, kwargs)
        plain = super().layout(pixel_values, grid_thw, kwargs)
        group = tower.spatial_merge_size**2
        by_window = lambda tensor: tensor.reshape(-1, group, tensor.shape[-1])[order].reshape(tensor.shape)  # noqa: E731
        frames = plain.segments[0]
        segments = tuple(frames if index in tower.fullatt_block_indexes else windows for index in range(len(self.blocks)))
        rotary = tuple(by_window(part) for part in plain.position_embeddings)
        return EncoderLayout(by_window(plain.hidden_states), rotary, segments, plain.units, order)

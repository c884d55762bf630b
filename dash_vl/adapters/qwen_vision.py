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
from dash_vl.adapters.encoder_base import EncoderAdapter, EncoderLayout
from dash_vl.engine.prefill_flops import LayerShapes


def segment_units(bounds: torch.Tensor) -> torch.Tensor:
    """``(P,)`` long: the segment of each patch, for cumulative ``bounds`` ``(S + 1,)``."""
    lengths = (bounds[1:] - bounds[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=bounds.device), lengths)


def call_arguments(args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """``(hidden_states, grid_thw, other keywords)`` of a Qwen ViT's ``forward`` call."""
    kwargs = dict(kwargs)
    named = dict(zip(("hidden_states", "grid_thw"), args))
    pixel_values = named.get("hidden_states", kwargs.pop("hidden_states", None))
    grid_thw = named.get("grid_thw", kwargs.pop("grid_thw", None))
    return pixel_values, grid_thw, kwargs


class Qwen2VisionAdapter(EncoderAdapter):
    """Qwen2-VL's ViT: full attention within each frame (an image is one frame) in every block."""

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.tower.blocks

    def block_shapes(self) -> LayerShapes:
        """``embed_dim`` wide (the config's ``hidden_size`` is the merger's output), fused QKV and
        ``proj``, an ``fc1`` / ``fc2`` MLP ``mlp_ratio`` times as wide."""
        config = self.tower.config
        width, heads = config.embed_dim, config.num_heads
        return LayerShapes(width, heads, heads, width // heads, int(width * config.mlp_ratio), mlp_matrices=2)

    def layout(self, args: tuple, kwargs: dict[str, Any]) -> EncoderLayout:
        """For ``forward(hidden_states, grid_thw, **kwargs)``: ``hidden_states`` are the flattened pixel
        patches ``(P, channels * temporal_patch * patch²)``, ``grid_thw`` ``(images, 3)``."""
        pixel_values, grid_thw, kwargs = call_arguments(args, kwargs)
        positions = hf_compat.qwen_vision_positions(self.tower, grid_thw, kwargs)
        frames = hf_compat.qwen_vision_frames(self.tower, grid_thw, kwargs)
        hidden = self.tower.patch_embed(pixel_values)
        rotary = self.tower.rotary_pos_emb(hidden, positions)
        return EncoderLayout(hidden, (frames,) * len(self.blocks), segment_units(frames), rotary)

    def block_arguments(self, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]) -> dict[str, Any]:
        """A block's (and its attention's) keywords over the patches that ``segments`` cut."""
        max_seqlen = hf_compat.vision_max_seqlen(segments, self.tower.config)
        return dict(cu_seqlens=segments, max_seqlen=max_seqlen, position_embeddings=rotary)

    def run_block(
        self, block: torch.nn.Module, hidden_states: torch.Tensor, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        return block(hidden_states, **self.block_arguments(segments, rotary))

    def attention_update(
        self, block: torch.nn.Module, hidden_states: torch.Tensor, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        return block.attn(block.norm1(hidden_states), **self.block_arguments(segments, rotary))

    def feed_forward(self, block: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + block.mlp(block.norm2(hidden_states))

    def output(
        self, hidden_states: torch.Tensor, layout: EncoderLayout, layer_states: tuple[torch.Tensor, ...] | None
    ) -> Any:
        merged = self.tower.merger(hidden_states)
        if layout.order is not None:
            merged = merged[torch.argsort(layout.order)]
        return hf_compat.vision_output(hidden_states, merged)


class Qwen2_5VisionAdapter(Qwen2VisionAdapter):
    """Qwen2.5-VL's ViT: window attention, full-frame attention in ``fullatt_block_indexes``; the patches
    run window by window (groups of ``spatial_merge_size²`` reordered by the window permutation)."""

    def block_shapes(self) -> LayerShapes:
        """``hidden_size`` wide, fused QKV and ``proj``, a gated MLP ``intermediate_size`` wide."""
        config = self.tower.config
        width, heads = config.hidden_size, config.num_heads
        return LayerShapes(width, heads, heads, width // heads, config.intermediate_size, mlp_matrices=3)

    def layout(self, args: tuple, kwargs: dict[str, Any]) -> EncoderLayout:
        tower = self.tower
        pixel_values, grid_thw, kwargs = call_arguments(args, kwargs)
        order, windows = hf_compat.qwen2_5_vl_windows(tower, grid_thw, kwargs)
        plain = super().layout((pixel_values, grid_thw), kwargs)
        group = tower.spatial_merge_size**2
        by_window = lambda tensor: tensor.reshape(-1, group, tensor.shape[-1])[order].reshape(tensor.shape)  # noqa: E731
        frames = plain.segments[0]
        segments = tuple(frames if index in tower.fullatt_block_indexes else windows for index in range(len(self.blocks)))
        rotary = tuple(by_window(part) for part in plain.position_embeddings)
        return EncoderLayout(by_window(plain.hidden_states), segments, plain.units, rotary, order=order)

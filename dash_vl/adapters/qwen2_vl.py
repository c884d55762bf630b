"""Qwen2-VL and Qwen2.5-VL (HF ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``).

Visual tokens are the ``<|image_pad|>`` and ``<|video_pad|>`` placeholders that the vision
merger's outputs replace. Rotary ids are the 3-D M-RoPE ids (temporal, height, width) that
the outer model computes; the engine gathers them per kept token, so kept tokens keep them.
"""

from __future__ import annotations

from typing import Any

import torch

from dash_vl import hf_compat
from dash_vl.adapters.base import ModelAdapter, VisionLanguageAdapter
from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.adapters.qwen_vision import Qwen2_5VisionAdapter, Qwen2VisionAdapter
from dash_vl.engine.encoder_evidence import SegmentAttention, VisualEvidence
from dash_vl.media import FrameSampling


class MRopeIds(ModelAdapter):
    """Rotary ids of a Qwen M-RoPE language model: three rows (temporal, height, width)."""

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


class Qwen2VLAdapter(MRopeIds, VisionLanguageAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    video_sampling = FrameSampling("qwen", max_frames=64, fps=2.0)

    @property
    def vision_feature_attention(self) -> torch.nn.Module:
        """The last ViT block's attention (its output goes through the merger to the LLM)."""
        return self.model.model.visual.blocks[-1].attn

    def encoder_adapter(self) -> EncoderAdapter:
        """The ViT (``model.model.visual``): windowed for Qwen2.5-VL, full attention per frame for Qwen2-VL."""
        visual = self.model.model.visual
        return Qwen2_5VisionAdapter(visual) if window_order_of(visual) else Qwen2VisionAdapter(visual)

    def vision_segments(self, attention: torch.nn.Module, args: tuple, kwargs: dict) -> list[SegmentAttention]:
        """Segments of the packed patch sequence ``(P, width)`` as the block's ``cu_seqlens`` cut it
        (frames; windows where the last block is a window block); the metric is the key before rotary."""
        hidden = args[0] if args else kwargs["hidden_states"]
        query, key, _ = attention.qkv(hidden).reshape(hidden.shape[0], 3, attention.num_heads, -1).unbind(1)
        metric = key.mean(dim=1)
        query, key = hf_compat.vision_rotary(attention)(query, key, *kwargs["position_embeddings"])
        query, key = (query * attention.scaling).transpose(0, 1), key.transpose(0, 1)
        bounds = kwargs["cu_seqlens"].tolist()
        return [
            SegmentAttention(query[:, start:end], key[:, start:end], metric[start:end])
            for start, end in zip(bounds[:-1], bounds[1:])
        ]

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        """Each LLM token is one merger group of ``spatial_merge_size²`` consecutive patches: the mean of
        their evidence; Qwen2.5-VL's window order is undone. Units are temporal slices (a frame pair of
        a video, or an image).

        Official is the VisionZip rule itself, on CLIP towers with ``[CLS]`` (dvlab-research/VisionZip,
        commit 3151f6d, ``visionzip/clip_encoder.py`` lines 43-83); its repository has no Qwen, SigLIP
        or InternViT code. Ours: the received-attention score standing in for ``[CLS]`` attention
        (:mod:`dash_vl.engine.vision_evidence`), this pooling of the patch evidence over each merger group,
        and the unit per temporal slice."""
        visual = self.model.model.visual
        grid = arguments["image_grid_thw" if modality == "image" else "video_grid_thw"]
        group = visual.spatial_merge_size**2
        tokens = patches.view(-1, group, patches.shape[1]).mean(dim=1)
        window_index = window_order(visual, grid)
        if window_index is not None:
            tokens = tokens[torch.argsort(window_index.to(tokens.device))]
        per_slice = (grid[:, 1] * grid[:, 2] // group).repeat_interleave(grid[:, 0])
        unit = torch.arange(per_slice.numel(), device=tokens.device).repeat_interleave(per_slice.to(tokens.device))
        return VisualEvidence(score=tokens[:, 0], metric=tokens[:, 1:], unit=unit)


def window_order(visual: torch.nn.Module, grid: torch.Tensor) -> torch.Tensor | None:
    """Qwen2.5-VL's window permutation of the merged tokens (position ``i`` of the blocks' order holds
    LLM token ``index[i]``); ``None`` for Qwen2-VL, which has no windows."""
    if not window_order_of(visual):
        return None
    return hf_compat.qwen2_5_vl_window_index(visual, grid)


def window_order_of(visual: torch.nn.Module) -> bool:
    """Whether the ViT runs its patches window by window (Qwen2.5-VL)."""
    return hasattr(visual, "fullatt_block_indexes")

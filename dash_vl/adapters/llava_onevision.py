"""LLaVA-OneVision (HF ``LlavaOnevisionForConditionalGeneration``, Qwen2 language model).

Visual tokens are every ``<image>`` and ``<video>`` placeholder the processor expands: each
image's base view and anyres crops, the image-newline features placed after every row of
crop features (the processor gives them ``<image>`` placeholders too), each video frame's
pooled features and the newline after the video. Rotary ids are 1-D and kept per token.

The vision encoder is SigLIP (no ``[CLS]``); its evidence reaches the LLM tokens through the
model's own packing (unpad, anyres downscale, newlines) and video pooling, so every token
gets the evidence of the patches its features come from. Units are tiles and video frames.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dash_vl import hf_compat
from dash_vl.adapters.base import VisionLanguageAdapter
from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.adapters.tiled_vision import SiglipVisionAdapter, numbered_tiles, packed_evidence
from dash_vl.engine.encoder_evidence import VisualEvidence


class LlavaOnevisionAdapter(VisionLanguageAdapter):
    model_types = ("llava_onevision",)

    @property
    def vision_feature_attention(self) -> nn.Module:
        tower = self.model.model.vision_tower
        encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
        return self.feature_layer(encoder.layers).self_attn

    def encoder_adapter(self) -> EncoderAdapter:
        """The SigLIP tower (``model.model.vision_tower``); units are its tiles (video frames)."""
        return SiglipVisionAdapter(self.model.model.vision_tower)

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        inner, config = self.model.model, self.model.config
        tiles, newline = numbered_tiles(patches, config.vision_config.image_size // config.vision_config.patch_size)
        if modality == "video":
            samples = hf_compat.video_frames_argument(arguments).shape[0]
            frames = inner.apply_pooling(tiles).reshape(samples, -1, tiles.shape[-1])
            tokens = torch.cat([frames, newline.expand(samples, 1, -1)], dim=1).flatten(0, 1)
        else:
            tokens = torch.cat(self._packed_images(tiles, newline, arguments), dim=0)
        return packed_evidence(tokens)

    def _packed_images(self, tiles: torch.Tensor, newline: torch.Tensor, arguments: dict[str, Any]) -> list[torch.Tensor]:
        """Per image, ``tiles`` ``(tiles, n, c)`` packed as ``get_image_features`` packs the features."""
        config = self.model.config
        image_sizes, per_image = arguments["image_sizes"], arguments.get("batch_num_images")
        needs_tiling = [True] * len(image_sizes) if per_image is None else [n == 1 for n in per_image for _ in range(n)]
        counts = [
            hf_compat.anyres_tile_count(size, config.image_grid_pinpoints, config.vision_config.image_size) if tiled else 1
            for size, tiled in zip(image_sizes, needs_tiling)
        ]
        packed, _ = self.model.model.pack_image_features(
            torch.split(tiles, counts), image_sizes, image_newline=newline, vision_aspect_ratio=config.vision_aspect_ratio
        )
        return packed

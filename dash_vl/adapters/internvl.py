"""InternVL 2.5 / 3 in HF format (HF ``InternVLForConditionalGeneration``; Qwen2 or Llama language model).

Visual tokens are the ``<IMG_CONTEXT>`` placeholders that the pixel-shuffled tile features
replace, for images (every dynamic tile and the thumbnail) and video frames alike. The
``<img>`` / ``</img>`` delimiters and ``FrameN:`` labels are text. The language model's
layers are used through the shared pre-norm interface, whichever family it is.

The vision encoder (InternViT) has a ``[CLS]`` token, which the LLM features leave out; each
LLM token is the pixel shuffle of 2 x 2 patches, whose evidence it averages. Units are tiles
(a video frame is one tile).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dash_vl.adapters.base import VisionLanguageAdapter
from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.adapters.tiled_vision import InternVisionAdapter
from dash_vl.engine.encoder_evidence import VisualEvidence


class InternVLAdapter(VisionLanguageAdapter):
    model_types = ("internvl",)
    feature_functions = {"image": "get_image_features"}
    vision_has_cls = True

    @property
    def vision_feature_attention(self) -> nn.Module:
        if self.model.config.vision_feature_select_strategy != "default":
            raise ValueError("VisionZip on InternVL needs vision_feature_select_strategy='default' (the [CLS] token dropped)")
        return self.feature_layer(self.model.model.vision_tower.encoder.layer).attention

    def encoder_adapter(self) -> EncoderAdapter:
        """The InternViT tower (``model.model.vision_tower``); units are its tiles, ``[CLS]`` never halted."""
        return InternVisionAdapter(self.model.model.vision_tower)

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        tiles = arguments["pixel_values"].shape[0]
        side = round((patches.shape[0] // tiles) ** 0.5)
        grid = patches.view(tiles, side, side, patches.shape[1])
        shuffled = self.model.model.pixel_shuffle(grid, scale_factor=self.model.config.downsample_ratio)
        tokens = shuffled.reshape(tiles, -1, shuffled.shape[-1] // patches.shape[1], patches.shape[1]).mean(dim=2)
        unit = torch.arange(tiles, device=tokens.device).repeat_interleave(tokens.shape[1])
        tokens = tokens.flatten(0, 1)
        return VisualEvidence(score=tokens[:, 0], metric=tokens[:, 1:], unit=unit)

"""LLaVA-1.5 (HF ``LlavaForConditionalGeneration``; CLIP ViT-L/14-336, a Llama language model).

Visual tokens are the ``<image>`` placeholders, one per CLIP patch of each image (576 at 336
px; the ``[CLS]`` token is left out, ``vision_feature_select_strategy = "default"``). Rotary
ids are 1-D and kept per token.

The vision encoder has a ``[CLS]`` token and its feature layer's patch states go through the
projector and nothing else, so VisionZip runs its official rule as published, before the
projector (:func:`dash_vl.methods.visionzip.select_before_projector`). Units are images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dash_vl.adapters.base import VisionLanguageAdapter
from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.adapters.tiled_vision import ClipVisionAdapter
from dash_vl.engine.encoder_evidence import VisualEvidence
from dash_vl.methods.visionzip import select_before_projector


class LlavaAdapter(VisionLanguageAdapter):
    model_types = ("llava",)
    feature_functions = {"image": "get_image_features"}
    vision_has_cls = True
    selects_before_projector = True
    takes_video = False

    @property
    def vision_feature_attention(self) -> nn.Module:
        if self.model.config.vision_feature_select_strategy != "default":
            raise ValueError(
                f"VisionZip on {type(self.model).__name__} needs vision_feature_select_strategy='default' (the [CLS] "
                "token dropped from the features)"
            )
        return self.feature_layer(self.model.model.vision_tower.encoder.layers).self_attn

    def encoder_adapter(self) -> EncoderAdapter:
        """The CLIP tower (``model.model.vision_tower``); units are its tiles, ``[CLS]`` never halted."""
        return ClipVisionAdapter(self.model.model.vision_tower)

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        """One unit per image, its patches in order (read where nothing is halted: at ρ > 0 VisionZip
        selects before the projector, :meth:`select_before_projector`)."""
        images = arguments["pixel_values"].shape[0]
        unit = torch.arange(images, device=patches.device).repeat_interleave(patches.shape[0] // images)
        return VisualEvidence(score=patches[:, 0], metric=patches[:, 1:], unit=unit)

    def select_before_projector(self, output: Any, patches: torch.Tensor, ratio: float) -> tuple[VisualEvidence, Any]:
        """Per image, the ``M`` official tokens through the projector in its first ``M`` features; the
        other features stay as they were and are marked not selected (the engine drops them)."""
        states = output.hidden_states[self.model.config.vision_feature_layer]  # (images, 1 + n, width)
        images, length = states.shape[0], states.shape[1] - 1
        patches = patches.view(images, length, -1)
        features, selected = [], []
        for image in range(images):
            tokens = select_before_projector(states[image], patches[image, :, 0], patches[image, :, 1:], ratio)
            image_features = output.pooler_output[image].clone()
            image_features[: tokens.shape[0]] = self.model.model.multi_modal_projector(tokens)
            features.append(image_features)
            selected.append(torch.arange(length, device=states.device) < tokens.shape[0])
        output.pooler_output = features
        selected = torch.cat(selected)
        nothing = torch.zeros(selected.shape[0], 1, device=selected.device)
        unit = torch.full(selected.shape, -1, dtype=torch.long, device=selected.device)
        return VisualEvidence(score=nothing[:, 0], metric=nothing, unit=unit, selected=selected), output

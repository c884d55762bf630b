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

    def tile_counts(self, arguments: dict[str, Any]) -> list[int]:
        """Encoder tiles of each image of one image feature call: one each."""
        return [1] * arguments["pixel_values"].shape[0]

    def official_layout(
        self, tokens: torch.Tensor, dominant: torch.Tensor, image: int, arguments: dict[str, Any]
    ) -> torch.Tensor:
        """One image's VisionZip tokens in the official order: ``tokens`` ``(tiles, M, hidden)`` (after the
        projector), ``dominant`` ``(tiles, D - 1)``; here the one tile's tokens, ``(M, hidden)``."""
        return tokens[0]

    def select_before_projector(
        self, output: Any, patches: torch.Tensor, ratio: float, arguments: dict[str, Any]
    ) -> tuple[VisualEvidence, Any]:
        """Per image, the official tokens of its tiles through the projector, in the official layout
        (:meth:`official_layout`), in its first features; the other features stay as they were and
        are marked not selected (the engine drops them).

        Raises:
            ValueError: if an image's official tokens outnumber its placeholders (LLaVA-NeXT at a low ρ).
        """
        states = output.hidden_states[self.model.config.vision_feature_layer]  # (tiles, 1 + n, width)
        tiles, length = states.shape[0], states.shape[1] - 1
        patches = patches.view(tiles, length, -1)
        per_tile = [select_before_projector(states[t], patches[t, :, 0], patches[t, :, 1:], ratio) for t in range(tiles)]
        tokens = self.model.model.multi_modal_projector(torch.stack([official for official, _ in per_tile]))
        dominant = torch.stack([indices for _, indices in per_tile])
        counts = self.tile_counts(arguments)
        features, selected = [], []
        for image, (image_tokens, image_dominant) in enumerate(zip(tokens.split(counts), dominant.split(counts))):
            laid_out = self.official_layout(image_tokens, image_dominant, image, arguments)
            image_features = output.pooler_output[image].clone()
            if laid_out.shape[0] > image_features.shape[0]:
                raise ValueError(
                    f"VisionZip's official layout gives image {image} {laid_out.shape[0]} tokens but the prompt holds "
                    f"{image_features.shape[0]} placeholders for it; raise the ratio above {ratio}"
                )
            image_features[: laid_out.shape[0]] = laid_out
            features.append(image_features)
            selected.append(torch.arange(image_features.shape[0], device=states.device) < laid_out.shape[0])
        output.pooler_output = features
        selected = torch.cat(selected)
        nothing = torch.zeros(selected.shape[0], 1, device=selected.device)
        unit = torch.full(selected.shape, -1, dtype=torch.long, device=selected.device)
        return VisualEvidence(score=nothing[:, 0], metric=nothing, unit=unit, selected=selected), output

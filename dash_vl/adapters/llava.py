"""LLaVA-1.5 (HF ``LlavaForConditionalGeneration``; CLIP ViT-L/14-336, a Llama language model).

Visual tokens are the ``<image>`` placeholders, one per CLIP patch of each image (576 at 336
px; the ``[CLS]`` token is left out, ``vision_feature_select_strategy = "default"``). Rotary
ids are 1-D and kept per token.

The vision encoder has a ``[CLS]`` token and its feature layer's patch states go through the
projector and nothing else, so VisionZip and VisPruner run their official rules as published,
before the projector (``select_before_projector`` of :mod:`dash_vl.methods.visionzip` and
:mod:`dash_vl.methods.vispruner`, through :meth:`LlavaAdapter.place_before_projector`). Units are images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dash_vl.adapters.base import VisionLanguageAdapter
from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.adapters.tiled_vision import ClipVisionAdapter
from dash_vl.engine.encoder_evidence import VisualEvidence


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
        """One unit per image, its patches in order (read where nothing is halted: at ρ > 0 VisionZip and
        VisPruner select before the projector, :meth:`place_before_projector`)."""
        images = arguments["pixel_values"].shape[0]
        unit = torch.arange(images, device=patches.device).repeat_interleave(patches.shape[0] // images)
        return VisualEvidence(score=patches[:, 0], metric=patches[:, 1:], unit=unit)

    @property
    def tile_side(self) -> int:
        """Patches along a tile's side (24 at 336 px)."""
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def tile_states(self, output: Any) -> torch.Tensor:
        """``(tiles, 1 + n, width)``: the feature layer's states of one image feature call, ``[CLS]`` first."""
        return output.hidden_states[self.model.config.vision_feature_layer]

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., width)`` encoder states through the projector, ``(..., hidden)``."""
        return self.model.model.multi_modal_projector(tokens)

    def tile_counts(self, arguments: dict[str, Any]) -> list[int]:
        """Encoder tiles of each image of one image feature call: one each."""
        return [1] * arguments["pixel_values"].shape[0]

    def crop_columns(self, image: int, arguments: dict[str, Any]) -> int | None:
        """Crops per grid row of image ``image`` after its base view; ``None``: the image is one view."""
        return None

    def place_before_projector(self, output: Any, images: list[torch.Tensor], policy: str) -> tuple[VisualEvidence, Any]:
        """Each image's tokens ``images[i]`` ``(K_i, hidden)`` (a policy's official tokens after the projector,
        in its official order) in the image's first ``K_i`` features; the other features stay as they were
        and are marked not selected (the engine drops them).

        Raises:
            ValueError: if an image's tokens outnumber its placeholders (LLaVA-NeXT at a low ρ).
        """
        features, selected = [], []
        for image, tokens in enumerate(images):
            image_features = output.pooler_output[image].clone()
            if tokens.shape[0] > image_features.shape[0]:
                raise ValueError(
                    f"{policy}'s official layout gives image {image} {tokens.shape[0]} tokens but the prompt holds "
                    f"{image_features.shape[0]} placeholders for it; raise the ratio"
                )
            image_features[: tokens.shape[0]] = tokens.to(image_features.dtype)
            features.append(image_features)
            selected.append(torch.arange(image_features.shape[0], device=tokens.device) < tokens.shape[0])
        output.pooler_output = features
        selected = torch.cat(selected)
        nothing = torch.zeros(selected.shape[0], 1, device=selected.device)
        unit = torch.full(selected.shape, -1, dtype=torch.long, device=selected.device)
        return VisualEvidence(score=nothing[:, 0], metric=nothing, unit=unit, selected=selected), output

"""LLaVA-NeXT (HF ``LlavaNextForConditionalGeneration``; CLIP ViT-L/14-336, a Mistral, Vicuna or
other HF language model).

Visual tokens are every ``<image>`` placeholder the processor expands: each image's base view,
its anyres crops (unpadded) and the image-newline feature after every row of crop features.
Rotary ids are 1-D and kept per token.

The CLIP tower and projector are LLaVA-1.5's (:class:`~dash_vl.adapters.llava.LlavaAdapter`), so
VisionZip runs its official rule before the projector on every tile and lays an image's tokens out
as VisionZip's LLaVA-NeXT code does (:func:`dash_vl.methods.visionzip.official_anyres_layout`).
For the other policies that read the encoder, the evidence is carried through the model's own
anyres packing (unpad, newlines; :func:`~dash_vl.adapters.tiled_vision.numbered_tiles`). Units are tiles.
"""

from __future__ import annotations

from typing import Any

import torch

from dash_vl import hf_compat
from dash_vl.adapters.llava import LlavaAdapter
from dash_vl.adapters.tiled_vision import numbered_tiles, packed_evidence
from dash_vl.engine.encoder_evidence import VisualEvidence
from dash_vl.methods.visionzip import official_anyres_layout


class LlavaNextAdapter(LlavaAdapter):
    model_types = ("llava_next",)

    @property
    def tile_side(self) -> int:
        """Patches along a tile's side."""
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def tile_counts(self, arguments: dict[str, Any]) -> list[int]:
        """Encoder tiles of each image (its base view and its anyres crops)."""
        config = self.model.config
        return [
            hf_compat.anyres_tile_count(size, config.image_grid_pinpoints, config.vision_config.image_size)
            for size in arguments["image_sizes"]
        ]

    def official_layout(
        self, tokens: torch.Tensor, dominant: torch.Tensor, image: int, arguments: dict[str, Any]
    ) -> torch.Tensor:
        """VisionZip's anyres layout (:func:`~dash_vl.methods.visionzip.official_anyres_layout`); an image
        without crops is its base view's tokens and the image newline (``visionzip/llava_arch.py`` lines
        122-128, as ``pack_image_features`` does)."""
        if tokens.shape[0] == 1:
            return torch.cat([tokens[0], self.model.model.image_newline[None].to(tokens.dtype)])
        config = self.model.config
        _, columns = hf_compat.anyres_grid_shape(
            arguments["image_sizes"][image], config.image_grid_pinpoints, config.vision_config.image_size
        )
        return official_anyres_layout(tokens[0], tokens[1:], dominant[1:], columns, self.tile_side)

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        config = self.model.config
        tiles, newline = numbered_tiles(patches, self.tile_side)
        image_sizes = arguments["image_sizes"]
        packed, _ = self.model.model.pack_image_features(
            torch.split(tiles, self.tile_counts(arguments)), image_sizes, config.vision_feature_select_strategy,
            image_newline=newline,
        )
        return packed_evidence(torch.cat(packed, dim=0))

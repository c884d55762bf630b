"""LLaVA-NeXT (HF ``LlavaNextForConditionalGeneration``; CLIP ViT-L/14-336, a Mistral, Vicuna or
other HF language model).

Visual tokens are every ``<image>`` placeholder the processor expands: each image's base view,
its anyres crops (unpadded) and the image-newline feature after every row of crop features.
Rotary ids are 1-D and kept per token.

The CLIP tower and projector are LLaVA-1.5's (:class:`~dash_vl.adapters.llava.LlavaAdapter`), so
VisionZip and VisPruner run their official rules before the projector on every tile and lay an
image's tokens out as their LLaVA-NeXT code does (the base view, then the crops' tokens in raster
order over the whole crop grid, no unpadding, no newlines; :meth:`crop_columns`). Where nothing is
halted the evidence is carried through the model's own anyres packing (unpad, newlines;
:func:`~dash_vl.adapters.tiled_vision.numbered_tiles`). Units are tiles.
"""

from __future__ import annotations

from typing import Any

import torch

from dash_vl import hf_compat
from dash_vl.adapters.llava import LlavaAdapter
from dash_vl.adapters.tiled_vision import numbered_tiles, packed_evidence
from dash_vl.engine.encoder_evidence import VisualEvidence


class LlavaNextAdapter(LlavaAdapter):
    model_types = ("llava_next",)

    def tile_counts(self, arguments: dict[str, Any]) -> list[int]:
        """Encoder tiles of each image (its base view and its anyres crops)."""
        config = self.model.config
        return [
            hf_compat.anyres_tile_count(size, config.image_grid_pinpoints, config.vision_config.image_size)
            for size in arguments["image_sizes"]
        ]

    def crop_columns(self, image: int, arguments: dict[str, Any]) -> int | None:
        config = self.model.config
        _, columns = hf_compat.anyres_grid_shape(
            arguments["image_sizes"][image], config.image_grid_pinpoints, config.vision_config.image_size
        )
        return columns

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        config = self.model.config
        tiles, newline = numbered_tiles(patches, self.tile_side)
        image_sizes = arguments["image_sizes"]
        packed, _ = self.model.model.pack_image_features(
            torch.split(tiles, self.tile_counts(arguments)), image_sizes, config.vision_feature_select_strategy,
            image_newline=newline,
        )
        return packed_evidence(torch.cat(packed, dim=0))

"""LLaVA-NeXT (HF ``LlavaNextForConditionalGeneration``; CLIP ViT-L/14-336, a Mistral, Vicuna or
other HF language model).

Visual tokens are every ``<image>`` placeholder the processor expands: each image's base view,
its anyres crops (unpadded) and the image-newline feature after every row of crop features.
Rotary ids are 1-D and kept per token.

The CLIP tower and projector are LLaVA-1.5's (:class:`~dash_vl.adapters.llava.LlavaAdapter`);
the anyres packing (unpad, newlines) sits between the projector and the LLM, so VisionZip
scores by ``[CLS]`` attention per tile and merges the LLM input embeddings, its evidence carried
through the model's own packing as for LLaVA-OneVision
(:func:`~dash_vl.adapters.tiled_vision.numbered_tiles`). Units are tiles.
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
    selects_before_projector = False

    def tokens_from_patches(self, modality: str, patches: torch.Tensor, arguments: dict[str, Any]) -> VisualEvidence:
        config = self.model.config
        tiles, newline = numbered_tiles(patches, config.vision_config.image_size // config.vision_config.patch_size)
        image_sizes = arguments["image_sizes"]
        counts = [hf_compat.anyres_tile_count(size, config.image_grid_pinpoints, config.vision_config.image_size) for size in image_sizes]
        packed, _ = self.model.model.pack_image_features(
            torch.split(tiles, counts), image_sizes, config.vision_feature_select_strategy, image_newline=newline
        )
        return packed_evidence(torch.cat(packed, dim=0))

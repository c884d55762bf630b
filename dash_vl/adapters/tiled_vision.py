"""The tile-batched vision towers for the encoder halting engine: SigLIP (LLaVA-OneVision's
``vision_tower``), CLIP (LLaVA-1.5's and LLaVA-NeXT's) and InternViT (InternVL's); and the
evidence of anyres-tiled images (LLaVA-NeXT, LLaVA-OneVision) carried through the model's packing.

All run a batch of equal tiles ``(tiles, n, width)`` (anyres tiles of an image, or video frames)
with full attention within each tile and no rotary embeddings; the language model's features
are read from the tower's ``hidden_states`` (``vision_feature_layer``) or its final state, so
their outputs carry every block's states. CLIP's and InternViT's token 0 of each tile is
``[CLS]``, never halted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dash_vl import hf_compat
from dash_vl.adapters.encoder_base import EncoderLayout, TiledEncoderAdapter, as_tiles
from dash_vl.engine.encoder_evidence import VisualEvidence
from dash_vl.engine.prefill_flops import LayerShapes


def pixels_of(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The ``pixel_values`` ``(tiles, channels, height, width)`` of a tower call."""
    return args[0] if args else kwargs["pixel_values"]


def fc_block_shapes(config: Any) -> LayerShapes:
    """A SigLIP / InternViT block: Q, K, V and output projections ``hidden_size`` wide, an ``fc1`` /
    ``fc2`` MLP ``intermediate_size`` wide."""
    return LayerShapes.from_config(config, mlp_matrices=2)


class SiglipVisionAdapter(TiledEncoderAdapter):
    """SigLIP's vision model: ``layer_norm1`` / ``self_attn`` / ``layer_norm2`` / ``mlp`` layers, then
    ``post_layernorm`` (and the pooling head where the config has one)."""

    @property
    def blocks(self) -> nn.ModuleList:
        return self.tower.encoder.layers

    def block_shapes(self) -> LayerShapes:
        return fc_block_shapes(self.tower.config)

    def embed(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        interpolate = kwargs.get("interpolate_pos_encoding", False)
        return self.tower.embeddings(pixels_of(args, kwargs), interpolate_pos_encoding=interpolate)

    def call_block(self, block: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        return block(tiles, attention_mask=None)

    def attention_update(
        self, block: nn.Module, hidden_states: torch.Tensor, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        tiles = as_tiles(hidden_states, segments)
        update, _ = block.self_attn(hidden_states=block.layer_norm1(tiles), attention_mask=None)
        return update.reshape(hidden_states.shape)

    def feed_forward(self, block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + block.mlp(block.layer_norm2(hidden_states))

    def output(self, hidden_states: torch.Tensor, layout: EncoderLayout, layer_states: tuple[torch.Tensor, ...]) -> Any:
        tiles = layout.segments[0]
        last = self.tower.post_layernorm(as_tiles(hidden_states, tiles))
        pooled = self.tower.head(last) if self.tower.use_head else None
        return hf_compat.vision_output(last, pooled, tuple(as_tiles(states, tiles) for states in layer_states))


class ClipVisionAdapter(SiglipVisionAdapter):
    """CLIP's vision model: SigLIP's blocks, a ``[CLS]`` token leading every tile and ``pre_layrnorm``
    before block 0; ``post_layernorm`` acts on the pooled ``[CLS]`` only."""

    has_cls = True

    def embed(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        return self.tower.pre_layrnorm(super().embed(args, kwargs))

    def output(self, hidden_states: torch.Tensor, layout: EncoderLayout, layer_states: tuple[torch.Tensor, ...]) -> Any:
        tiles = layout.segments[0]
        last = as_tiles(hidden_states, tiles)
        return hf_compat.vision_output(
            last, self.tower.post_layernorm(last[:, 0]), tuple(as_tiles(states, tiles) for states in layer_states)
        )


class InternVisionAdapter(TiledEncoderAdapter):
    """InternViT: ``layernorm_before`` / ``attention`` scaled by ``lambda_1``, ``layernorm_after`` / ``mlp``
    scaled by ``lambda_2`` (layer scale), then ``layernorm``; a ``[CLS]`` token leads every tile."""

    has_cls = True

    @property
    def blocks(self) -> nn.ModuleList:
        return self.tower.encoder.layer

    def block_shapes(self) -> LayerShapes:
        return fc_block_shapes(self.tower.config)

    def embed(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        return self.tower.embeddings(pixels_of(args, kwargs), bool_masked_pos=kwargs.get("bool_masked_pos"))

    def attention_update(
        self, block: nn.Module, hidden_states: torch.Tensor, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        update, _ = block.attention(block.layernorm_before(as_tiles(hidden_states, segments)))
        return (block.lambda_1 * update).reshape(hidden_states.shape)

    def feed_forward(self, block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        update = block.dropout(block.mlp(block.layernorm_after(hidden_states)))
        if block.lambda_2 is not None:
            update = block.lambda_2 * update
        return hidden_states + update

    def output(self, hidden_states: torch.Tensor, layout: EncoderLayout, layer_states: tuple[torch.Tensor, ...]) -> Any:
        tiles = layout.segments[0]
        last = self.tower.layernorm(as_tiles(hidden_states, tiles))
        return hf_compat.vision_output(last, None, tuple(as_tiles(states, tiles) for states in layer_states))


def numbered_tiles(patches: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The evidence of anyres tiles, shaped for the model's own packing code to move it like features.

    Args:
        patches: ``(tiles * side * side, c)``, per patch of every tile (``[CLS]`` left out), in tile order.
        side: patches along a tile's side.

    Returns:
        ``(tiles, side * side, c + 1)``: the patches with their tile number as the last channel, and the
        ``(c + 1,)`` image-newline stand-in (zeros, tile number ``-1``: it carries no patch).
    """
    tiles = patches.view(-1, side * side, patches.shape[1])
    tile_number = torch.arange(tiles.shape[0], device=tiles.device, dtype=tiles.dtype)
    tiles = torch.cat([tiles, tile_number[:, None, None].expand(-1, side * side, 1)], dim=-1)
    newline = torch.zeros(tiles.shape[-1], device=tiles.device, dtype=tiles.dtype)
    newline[-1] = -1
    return tiles, newline


def packed_evidence(tokens: torch.Tensor) -> VisualEvidence:
    """The evidence of ``tokens`` ``(N, 1 + m + 1)`` (score, metric, tile number, as
    :func:`numbered_tiles` lays them out) after the model packed them into LLM token order."""
    return VisualEvidence(score=tokens[:, 0], metric=tokens[:, 1:-1], unit=tokens[:, -1].round().long())

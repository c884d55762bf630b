"""The interface between the encoder halting engine (:mod:`dash_vl.encoder_halting`) and one vision tower.

An encoder adapter tells the engine how one call of a tower turns its pixels into the packed
patch sequence its blocks run on (:meth:`EncoderAdapter.layout`), how a block is called on a
subset of those patches (:meth:`EncoderAdapter.block_arguments`), how a block splits into its
attention and feed-forward sub-layers, and how the final patch states become the tower's output
(:meth:`EncoderAdapter.output`). The defaults fit pre-norm blocks named ``norm1`` / ``attn`` /
``norm2`` / ``mlp`` (the Qwen2-VL and Qwen2.5-VL ViTs); a tower overrides only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class EncoderLayout:
    """One call of a vision tower, laid out as its blocks see it (the packed patch sequence).

    Attributes:
        hidden_states: ``(P, width)``, the patch embeddings entering block 0, in the blocks' order.
        position_embeddings: ``(cos, sin)``, each ``(P, head_dim)``, the rotary tables of the patches.
        segments: per block, ``(S + 1,)`` int32 cumulative bounds of its attention segments over
            the ``P`` patches (``cu_seqlens``: a frame or image each, or a window of one).
        units: ``(P,)`` long, the image or video frame each patch belongs to (the unit within which
            ``ρ_v`` of the patches halt).
        order: where the blocks' order differs from the tower's output order (Qwen2.5-VL's
            windows), the permutation of merged tokens it applies; else ``None``.
    """

    hidden_states: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    segments: tuple[torch.Tensor, ...]
    units: torch.Tensor
    order: torch.Tensor | None = None


class EncoderAdapter:
    """Maps one vision tower (``visual``, whose ``forward(pixel_values, grid_thw)`` the engine takes over)
    onto the encoder engine's interface."""

    def __init__(self, tower: nn.Module) -> None:
        self.tower = tower

    @property
    def blocks(self) -> nn.ModuleList:
        return self.tower.blocks

    def layout(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, kwargs: dict[str, Any]) -> EncoderLayout:
        """The packed patch sequence of one call and what its blocks need."""
        raise NotImplementedError(f"{type(self).__name__} does not lay out its tower's patches")

    def block_arguments(
        self, segments: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
    ) -> dict[str, Any]:
        """Keyword arguments of a block (and of its attention) over the patches that ``segments`` cut."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its blocks are called")

    def output(self, hidden_states: torch.Tensor, layout: EncoderLayout) -> Any:
        """The tower's output from the final patch states ``(P, width)`` (in the blocks' order)."""
        raise NotImplementedError(f"{type(self).__name__} does not build its tower's output")

    def attention_update(self, block: nn.Module, hidden_states: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        """The attention sub-layer's output ``U`` ``(P, width)`` before the residual add."""
        return block.attn(block.norm1(hidden_states), **arguments)

    def feed_forward(self, block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """The rest of the block after the attention residual: ``h + mlp(norm2(h))``."""
        return hidden_states + block.mlp(block.norm2(hidden_states))

"""The interface between the encoder halting engine (:mod:`dash_vl.engine.vision_encoder`) and one vision tower.

The engine sees every tower as one packed sequence of ``P`` patch states ``(P, width)`` cut into
attention segments (Qwen ViTs: frames or windows, as ``cu_seqlens``; SigLIP, InternViT: tiles or
frames of equal length). An encoder adapter tells it how one call of the tower lays its input out
that way (:meth:`EncoderAdapter.layout`), how a block runs on the patches a set of segments cuts
(:meth:`EncoderAdapter.run_block`), how a block splits into its attention and feed-forward
sub-layers, how the final states become the tower's output (:meth:`EncoderAdapter.output`), and
the sizes of its blocks for FLOP counts (:meth:`EncoderAdapter.block_shapes`).
:class:`TiledEncoderAdapter` does the layout for towers over a batch of equal-length tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dash_vl.engine.prefill_flops import LayerShapes


@dataclass(frozen=True)
class EncoderLayout:
    """One call of a vision tower, laid out as its blocks see it (the packed patch sequence).

    Attributes:
        hidden_states: ``(P, width)``, the patch embeddings entering block 0, in the blocks' order.
        segments: per block, ``(S + 1,)`` int32 cumulative bounds of its attention segments over
            the ``P`` patches (a frame, image or tile each, or a window of one).
        units: ``(P,)`` long, the image, video frame or tile each patch belongs to (the unit within
            which ``ρ_v`` of the patches halt).
        position_embeddings: the rotary tables of the patches, each ``(P, head_dim)``; ``()`` for a
            tower without rotary embeddings.
        protected: ``(P,)`` bool, patches never halted (``[CLS]``); ``None`` where there are none.
        order: where the blocks' order differs from the tower's output order (Qwen2.5-VL's
            windows), the permutation of merged tokens it applies; else ``None``.
    """

    hidden_states: torch.Tensor
    segments: tuple[torch.Tensor, ...]
    units: torch.Tensor
    position_embeddings: tuple[torch.Tensor, ...] = ()
    protected: torch.Tensor | None = None
    order: torch.Tensor | None = None


class EncoderAdapter:
    """Maps one vision tower (whose ``forward`` the engine takes over) onto the encoder engine's interface.

    :attr:`wants_layer_states`: the tower's output carries every block's states (``hidden_states``,
    which LLaVA-OneVision and InternVL read their features from), so the engine assembles them.
    """

    wants_layer_states: ClassVar[bool] = False

    def __init__(self, tower: nn.Module) -> None:
        self.tower = tower

    @property
    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError(f"{type(self).__name__} does not name its tower's blocks")

    def block_shapes(self) -> LayerShapes:
        """The sizes of one of the tower's blocks (all are alike), for the report's FLOP counts."""
        raise NotImplementedError(f"{type(self).__name__} does not give its blocks' sizes")

    def layout(self, args: tuple, kwargs: dict[str, Any]) -> EncoderLayout:
        """The packed patch sequence of one call of the tower with ``args`` / ``kwargs``."""
        raise NotImplementedError(f"{type(self).__name__} does not lay out its tower's patches")

    def run_block(
        self, block: nn.Module, hidden_states: torch.Tensor, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Block over the packed patches ``(K, width)`` that ``segments`` cuts; returns ``(K, width)``."""
        raise NotImplementedError(f"{type(self).__name__} does not say how its blocks are called")

    def attention_update(
        self, block: nn.Module, hidden_states: torch.Tensor, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """The attention sub-layer's output ``U`` ``(P, width)``, as added to the residual stream."""
        raise NotImplementedError(f"{type(self).__name__} does not split its blocks")

    def feed_forward(self, block: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """The rest of the block after the attention residual, on ``(K, width)``."""
        raise NotImplementedError(f"{type(self).__name__} does not split its blocks")

    def output(
        self, hidden_states: torch.Tensor, layout: EncoderLayout, layer_states: tuple[torch.Tensor, ...] | None
    ) -> Any:
        """The tower's output from the final patch states ``(P, width)`` (in the blocks' order) and, where
        :attr:`wants_layer_states`, the states entering block 0 and leaving every block (each ``(P, width)``)."""
        raise NotImplementedError(f"{type(self).__name__} does not build its tower's output")


class TiledEncoderAdapter(EncoderAdapter):
    """A tower over a batch of tiles ``(tiles, n, width)`` (an image's anyres tiles, a video's frames),
    full attention within each tile, no rotary: each tile is one segment and one unit.

    Every tile halts the same number of patches, so the active patches of all tiles still form a
    ``(tiles, k, width)`` batch and the blocks run unchanged, with no mask. Where :attr:`has_cls`,
    token 0 of each tile is ``[CLS]`` and is never halted.
    """

    wants_layer_states = True
    has_cls: ClassVar[bool] = False

    def embed(self, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        """The tiles' states entering block 0, ``(tiles, n, width)``."""
        raise NotImplementedError(f"{type(self).__name__} does not embed its tiles")

    def layout(self, args: tuple, kwargs: dict[str, Any]) -> EncoderLayout:
        tiles = self.embed(args, kwargs)
        count, length, width = tiles.shape
        device = tiles.device
        bounds = torch.arange(0, count * length + 1, length, dtype=torch.int32, device=device)
        units = torch.arange(count, device=device).repeat_interleave(length)
        protected = None
        if self.has_cls:
            protected = (torch.arange(length, device=device) == 0).repeat(count)
        return EncoderLayout(tiles.reshape(-1, width), (bounds,) * len(self.blocks), units, protected=protected)

    def run_block(
        self, block: nn.Module, hidden_states: torch.Tensor, segments: torch.Tensor, rotary: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        return self.call_block(block, as_tiles(hidden_states, segments)).reshape(hidden_states.shape)

    def call_block(self, block: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        """The block on a batch of tiles ``(tiles, k, width)``."""
        return block(tiles)


def as_tiles(hidden_states: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Packed patches ``(K, width)`` cut by ``segments`` into equal segments, as ``(segments, K / segments, width)``."""
    return hidden_states.view(segments.numel() - 1, -1, hidden_states.shape[-1])

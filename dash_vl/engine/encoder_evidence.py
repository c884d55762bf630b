"""What an adapter hands the evidence recorder (:mod:`dash_vl.engine.vision_evidence`) about a vision encoder.

Plain data, so that adapters (:mod:`dash_vl.adapters.base`) and the recorder both depend on this module
and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class SegmentAttention:
    """Queries and keys of one attention segment of the encoder's feature layer.

    Attributes:
        queries: ``(heads, n, head_dim)``, rotary applied and multiplied by the attention's scaling.
        keys: ``(heads, n, head_dim)``, rotary applied.
        metric: ``(n, m)``, the keys before rotary averaged over heads (VisionZip's similarity metric).
    """

    queries: torch.Tensor
    keys: torch.Tensor
    metric: torch.Tensor


@dataclass(frozen=True)
class VisualEvidence:
    """Per visual token of one encoder call, in the order the model places the features.

    Attributes:
        score: ``(N,)`` float32, dominance (higher means more attended in the encoder).
        metric: ``(N, m)`` float32, similarity metric.
        unit: ``(N,)`` long, the tile or frame the token belongs to (numbered within the call);
            ``-1`` for layout tokens that carry no patch (LLaVA-OneVision's image newlines) and for
            tokens the encoder call already decided on (``selected`` given).
        selected: ``(N,)`` bool, where the feature function already ran the policy's official rule
            before the projector (VisionZip, VisPruner on LLaVA-1.5, LLaVA-NeXT): the tokens it kept,
            whose features it replaced; ``None`` where the policy selects.
    """

    score: torch.Tensor
    metric: torch.Tensor
    unit: torch.Tensor
    selected: torch.Tensor | None = None


class PatchesToProjector(Protocol):
    """A family whose encoder's patch states go straight to its projector, one LLM token per patch
    (LLaVA-1.5, LLaVA-NeXT): what a policy that selects before the projector reads and writes there.

    Attributes:
        tile_side: patches along a tile's side.
    """

    tile_side: int

    def tile_states(self, output: Any) -> torch.Tensor:
        """``(tiles, 1 + n, width)``: the feature layer's states of one image feature call, ``[CLS]`` first."""

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(..., width)`` encoder states through the projector, ``(..., hidden)``."""

    def tile_counts(self, arguments: dict[str, Any]) -> list[int]:
        """Encoder tiles of each image of the call (``arguments``: the feature function's, by name)."""

    def crop_columns(self, image: int, arguments: dict[str, Any]) -> int | None:
        """Crops per grid row of image ``image`` after its base view; ``None`` where an image is one view."""

    def place_before_projector(self, output: Any, images: list[torch.Tensor], policy: str) -> tuple[VisualEvidence, Any]:
        """Each image's tokens ``(K_i, hidden)`` in its first ``K_i`` features, the others marked dropped:
        the call's evidence (``selected``) and output."""

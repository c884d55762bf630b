"""What an adapter hands the evidence recorder (:mod:`dash_vl.engine.vision_evidence`) about a vision encoder.

Plain data, so that adapters (:mod:`dash_vl.adapters.base`) and the recorder both depend on this module
and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        selected: ``(N,)`` bool, where the feature function already ran VisionZip's official rule
            before the projector (LLaVA-1.5, LLaVA-NeXT): the tokens it kept, whose features carry the merge;
            ``None`` where the policy selects.
    """

    score: torch.Tensor
    metric: torch.Tensor
    unit: torch.Tensor
    selected: torch.Tensor | None = None

"""What the vision encoder says about each visual token, for policies that decide before the LLM.

VisionZip ranks the visual tokens by the attention they get inside the vision encoder and
merges the rest by the similarity of their keys. :class:`EvidenceRecorder` collects that
evidence while the model encodes its images and videos: a forward pre-hook on the attention
module of the encoder's feature layer (the layer whose output the LLM receives) computes, per
attention segment (one tile or one frame),

* the dominance score of every patch: the attention the ``[CLS]`` query pays it, summed over
  heads, where the encoder has a ``[CLS]`` token; otherwise the attention it receives,
  averaged over heads and over all queries (dash_vl's adaptation for encoders without
  ``[CLS]``, such as SigLIP and the Qwen2-VL ViT: VisionZip's official code covers CLIP only);
* the similarity metric: its key, averaged over heads.

Attention is computed in query chunks from the queries and keys, so no ``n x n`` matrix of a
whole segment is held. The adapter then maps patches onto LLM visual tokens the way its
family merges them (2 x 2 merger, pixel shuffle, anyres packing, video pooling), and the
recorder lays the evidence out over the prompt like the model lays out the features.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dash_vl.adapters.base import VisionLanguageAdapter
from dash_vl.engine.encoder_evidence import SegmentAttention, VisualEvidence

QUERY_CHUNK = 1024

BeforeProjector = Callable[[Any, torch.Tensor, dict[str, Any]], tuple[VisualEvidence, Any]]
"""A policy's rule run inside a feature call: ``(output, patches, arguments) -> (evidence, output)``, with
``patches`` ``(P, 1 + m)`` as :meth:`VisionLanguageAdapter.tokens_from_patches` takes them."""


def patch_scores(segment: SegmentAttention, has_cls: bool) -> torch.Tensor:
    """``(n,)`` float32 dominance of the segment's tokens (``(n - 1,)``, patches only, with ``[CLS]``).

    With ``[CLS]`` (token 0): its attention to each patch, summed over heads. Without: the
    attention each token receives, averaged over heads and all ``n`` queries.
    """
    keys = segment.keys.float().transpose(-1, -2)
    if has_cls:
        return (segment.queries[:, :1].float() @ keys).softmax(dim=-1)[:, 0, 1:].sum(dim=0)
    heads, length = segment.queries.shape[:2]
    received = torch.zeros(length, dtype=torch.float32, device=keys.device)
    for start in range(0, length, QUERY_CHUNK):
        received += (segment.queries[:, start : start + QUERY_CHUNK].float() @ keys).softmax(dim=-1).sum(dim=(0, 1))
    return received / (heads * length)


@dataclass
class EvidenceCall:
    """One call of the model's image or video feature function and the patch evidence it produced."""

    modality: str
    arguments: dict[str, Any]
    patches: list[torch.Tensor]


class EvidenceRecorder:
    """Collects :class:`VisualEvidence` for the images and videos of each prompt.

    :meth:`install` wraps the model's feature functions (``get_image_features`` /
    ``get_video_features``) so that the evidence of a call is known to come from images or
    videos, and hooks the feature layer's attention. A feature function that another one calls
    records under the outer call (its modality, its arguments). :meth:`take` hands the evidence of the
    prompt just encoded to the engine and forgets it.

    With ``before_projector`` given (the policy's :meth:`~dash_vl.methods.base.HaltingMethod.select_before_projector`
    at the config's ratio, on a family whose features go from the encoder straight to the projector:
    LLaVA-1.5 and LLaVA-NeXT), the feature function itself runs the policy's rule on each call's
    output and patch evidence, and its evidence says which tokens it kept.
    """

    def __init__(self, adapter: VisionLanguageAdapter, before_projector: BeforeProjector | None = None) -> None:
        self.adapter = adapter
        self.before_projector = before_projector
        self.evidence: dict[str, list[VisualEvidence]] = {"image": [], "video": []}
        self._call: EvidenceCall | None = None
        self._handles: list[Any] = []
        self._wrapped: list[str] = []

    def install(self) -> None:
        module = self.adapter.prompt_module
        for modality, name in self.adapter.feature_functions.items():
            original = getattr(module, name)
            setattr(module, name, self._wrap(modality, original))
            self._wrapped.append(name)
        attention = self.adapter.vision_feature_attention
        self._handles.append(attention.register_forward_pre_hook(self._on_attention, with_kwargs=True))

    def remove(self) -> None:
        for name in self._wrapped:
            delattr(self.adapter.prompt_module, name)
        for handle in self._handles:
            handle.remove()
        self._wrapped, self._handles = [], []

    def take(self) -> dict[str, list[VisualEvidence]]:
        evidence, self.evidence = self.evidence, {"image": [], "video": []}
        return evidence

    def _wrap(self, modality: str, original: Callable) -> Callable:
        signature = inspect.signature(original)

        @functools.wraps(original)  # generate() reads the feature function's signature
        def recording(*args: Any, **kwargs: Any) -> Any:
            if self._call is not None:  # called by another feature function (Qwen3-VL's video calls its image one)
                return original(*args, **kwargs)
            arguments = signature.bind_partial(*args, **kwargs).arguments
            self._call = EvidenceCall(modality, {**arguments.pop("kwargs", {}), **arguments}, [])
            try:
                output = original(*args, **kwargs)
            finally:
                call, self._call = self._call, None
            patches = torch.cat(call.patches, dim=0)
            if self.before_projector is not None:
                evidence, output = self.before_projector(output, patches, call.arguments)
            else:
                evidence = self.adapter.tokens_from_patches(modality, patches, call.arguments)
            self.evidence[modality].append(evidence)
            return output

        return recording

    def _on_attention(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._call is None:
            return
        with torch.no_grad():
            for segment in self.adapter.vision_segments(module, args, kwargs):
                score = patch_scores(segment, self.adapter.vision_has_cls)
                metric = segment.metric[1:] if self.adapter.vision_has_cls else segment.metric
                self._call.patches.append(torch.cat([score[:, None], metric.float()], dim=1))


def evidence_over_prompt(
    evidence: dict[str, list[VisualEvidence]], input_ids: torch.Tensor, token_ids: dict[str, int | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay the evidence out over the prompt, as the model scatters features into its placeholders.

    Args:
        evidence: per modality, the evidence of each encoder call in call order.
        input_ids: ``(batch, T)`` prompt ids.
        token_ids: per modality, the placeholder token id.

    Returns:
        ``score`` ``(batch, T)``, ``metric`` ``(batch, T, m)``, ``unit`` ``(batch, T)`` long, with
        units numbered across the whole prompt batch (non-visual positions have unit ``-1``), and
        ``selected`` ``(batch, T)`` bool, the tokens an encoder call already kept (all False where
        the policy selects).

    Raises:
        ValueError: if the placeholders and the recorded evidence disagree in number.
    """
    batch, length = input_ids.shape
    metric_size = next(item.metric.shape[1] for items in evidence.values() for item in items)
    device = input_ids.device
    score = torch.zeros(batch, length, device=device)
    metric = torch.zeros(batch, length, metric_size, device=device)
    unit = torch.full((batch, length), -1, dtype=torch.long, device=device)
    selected = torch.zeros(batch, length, dtype=torch.bool, device=device)
    offset = 0
    for modality, items in evidence.items():
        if not items:
            continue
        places = input_ids == token_ids[modality]
        units = []
        for item in items:
            units.append(torch.where(item.unit >= 0, item.unit + offset, -1))
            offset += int(item.unit.max()) + 1
        units = torch.cat(units).to(device)
        if int(places.sum()) != units.numel():
            raise ValueError(
                f"the prompt has {int(places.sum())} {modality} placeholders but the encoder produced "
                f"{units.numel()} {modality} tokens"
            )
        score[places] = torch.cat([item.score for item in items]).to(device)
        metric[places] = torch.cat([item.metric for item in items]).to(device)
        unit[places] = units
        selected[places] = torch.cat([selection_of(item) for item in items]).to(device)
    return score, metric, unit, selected


def selection_of(evidence: VisualEvidence) -> torch.Tensor:
    """``(N,)`` bool: the tokens the encoder call kept (``evidence.selected``), all False where it kept none."""
    return evidence.selected if evidence.selected is not None else torch.zeros_like(evidence.unit, dtype=torch.bool)

"""What every halting policy sees at the decision layer, and what it must return.

A policy decides per prompt which tokens stay active from the decision layer ``l_s`` on; a
multi-stage policy (:attr:`HaltingMethod.supports_stages`, ``HaltingConfig.stage_layers``) decides
again at each later decision layer, over the tokens still active. At a later stage every tensor
below is over that stage's compact layout: ``T`` is then the largest count of tokens still active
(left-padded, prompt order kept), ``valid`` marks them and :attr:`DecisionInputs.positions` holds the
prompt position of each slot.
Where it decides is its :attr:`HaltingMethod.placement`:

* ``"attention_update"`` (DASH and its ablations): inside layer ``l_s``, after its attention
  sub-layer has run over all ``T`` tokens; halted tokens drop out before the residual add.
* ``"layer_input"`` (FastV, DART, and VisionZip at ``l_s = 0``): before layer ``l_s``; only the
  active tokens run it. Such a policy may also change the states its kept tokens carry into
  ``l_s`` (VisionZip merges dropped tokens into kept ones).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch

if TYPE_CHECKING:
    from dash_vl.engine.encoder_evidence import PatchesToProjector, VisualEvidence

Placement = Literal["attention_update", "layer_input"]


class MethodKnobs(Protocol):
    """The knobs a policy may read when it is built (:class:`dash_vl.config.HaltingConfig` has them,
    with the method's defaults already filled in).

    Attributes:
        start_layer: the decision layer, a layer index or a fraction of the depth.
        scope: ``"all"`` or ``"visual"``.
        seed: the random generator's seed.
    """

    start_layer: int | float
    scope: str
    seed: int
    observation_window: int


class DecisionInputs(Protocol):
    """The decision layer's tensors over all ``T`` prompt tokens; each is computed on first use.

    Attributes:
        hidden_states: ``(batch, T, hidden)``, the residual stream entering layer ``l_s``.
        valid: ``(batch, T)`` bool, non-padding tokens.
        eligible: ``(batch, T)`` bool, tokens the policy may halt (``scope`` and question applied).
        eligible_counts: eligible tokens per sample, already on the host.
        valid_counts: valid tokens per sample, on the host.
        positions: ``(batch, T)`` long, the prompt position (index into the padded prompt) of each slot.
        stage: which decision this is, ``0`` for the first.
        initial_eligible_counts: eligible tokens per sample at the first decision, on the host.
    """

    hidden_states: torch.Tensor
    valid: torch.Tensor
    eligible: torch.Tensor
    eligible_counts: list[int]
    valid_counts: list[int]
    positions: torch.Tensor
    stage: int
    initial_eligible_counts: list[int]

    def attention_update(self) -> torch.Tensor:
        """``(batch, T, hidden)``: layer ``l_s``'s attention sub-layer output (after ``o_proj``, before the
        residual add). Only under the ``"attention_update"`` placement."""

    def block_update(self) -> torch.Tensor:
        """``(batch, T, hidden)``: layer ``l_s``'s whole-block update (output minus input), MLP run on all
        ``T`` tokens. Only under the ``"attention_update"`` placement."""

    def previous_keys(self) -> torch.Tensor:
        """``(batch, kv_heads, T, head_dim)``: the keys of layer ``l_s - 1`` (rotary applied), as cached."""

    def last_query_attention(self) -> torch.Tensor:
        """``(batch, heads, T)`` float32: layer ``l_s - 1``'s attention probabilities from each sample's
        last prompt token to every token (softmax over valid keys), one row, no ``T x T`` matrix."""

    def window_attention(self, queries: int) -> torch.Tensor:
        """``(batch, heads, queries, T)`` float32: layer ``l_s``'s own attention probabilities (its
        projections over :attr:`hidden_states`, rotary applied) from each sample's last ``queries``
        slots to every slot, causal, softmax over valid keys (and within a sliding window)."""

    def normed_hidden_states(self) -> torch.Tensor:
        """``(batch, T, hidden)``: :attr:`hidden_states` through the model's final norm."""

    def vision_evidence(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The vision encoder's evidence laid over the prompt (see :mod:`dash_vl.engine.vision_evidence`):
        dominance ``(batch, T)``, similarity metric ``(batch, T, m)``, tile/frame unit ``(batch, T)``
        long (``-1`` off the visual tokens) and the tokens an encoder call already selected
        ``(batch, T)`` bool (a policy's rule before the projector). Only for policies with ``needs_vision_evidence``."""


@dataclass(frozen=True)
class Decision:
    """What a policy decided for one prompt.

    Attributes:
        kept: ``(batch, T)`` bool, the eligible tokens that stay active.
        states: ``(batch, T, hidden)``, the states the active tokens carry into layer ``l_s``
            where the policy changes them (``"layer_input"`` placement only); ``None`` keeps them.
        kept_counts: per sample, how many eligible tokens ``kept`` holds, where the policy knows
            it without reading the GPU; the engine then lays out the compact batch without
            waiting for the GPU. ``None``: the engine counts ``kept`` itself.
    """

    kept: torch.Tensor
    states: torch.Tensor | None = None
    kept_counts: list[int] | None = None


class HaltingMethod(ABC):
    """A policy choosing, once per prompt, the tokens that stay active from layer ``l_s`` on.

    Subclasses set :attr:`placement`, :attr:`needs_block_update` (the MLP of layer ``l_s`` runs on
    all ``T`` tokens, which the FLOP count must know), :attr:`needs_vision_evidence` (the vision
    encoder's attention is recorded while the prompt is encoded), :attr:`selects_before_projector`
    (on a family whose encoder states go straight to the projector, the feature function runs the
    policy's own rule on them, :meth:`select_before_projector`), :attr:`default_scope` and
    :attr:`default_start_layer` (used where the config leaves ``scope`` / ``start_layer`` unset),
    :attr:`lowest_start_layer` (0 only for a policy that decides before the first layer),
    :attr:`supports_stages` (it can decide again over a compacted prompt) with
    :attr:`default_stage_layers`, and implement :meth:`keep` (or :meth:`decide`, to change the kept
    tokens' states too); :meth:`scoring_queries` tells the FLOP count of attention the policy computes
    itself at a decision layer, :meth:`stage_retention` the share of eligible tokens each stage keeps.
    """

    placement: ClassVar[Placement] = "attention_update"
    needs_block_update: ClassVar[bool] = False
    needs_vision_evidence: ClassVar[bool] = False
    selects_before_projector: ClassVar[bool] = False
    default_scope: ClassVar[str] = "all"
    default_start_layer: ClassVar[int | float] = 0.4
    lowest_start_layer: ClassVar[int] = 1
    supports_stages: ClassVar[bool] = False
    default_stage_layers: ClassVar[tuple[int | float, ...]] = ()

    @classmethod
    def from_config(cls, config: MethodKnobs) -> HaltingMethod:
        """The policy for ``config`` (knobs other than ``ratio`` that the policy reads)."""
        return cls()

    @abstractmethod
    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        """``(batch, T)`` bool: the eligible tokens that stay active (the engine keeps every
        non-eligible valid token active whatever this says)."""

    def decide(self, inputs: DecisionInputs, ratio: float) -> Decision:
        """The decision for one prompt; by default :meth:`keep` with the states left as they are."""
        return Decision(kept=self.keep(inputs, ratio))

    @classmethod
    def stage_retention(cls, ratio: float, stage: int) -> float:
        """The fraction of the first decision's eligible tokens still active after decision ``stage``
        (0-based), before rounding to whole tokens: ``(1 - ratio)^(stage + 1)``. One decision keeps
        ``1 - ratio``; each later one halts ``ratio`` of the eligible tokens still active
        (:class:`ScoredHalting`'s ``floor(ratio * E)``; PyramidDrop keeps ``λ^(stage + 1)``, ``λ = 1 - ratio``)."""
        return (1.0 - ratio) ** (stage + 1)

    def scoring_queries(self) -> int:
        """Query rows whose attention the policy computes at a decision layer with that layer's own
        projections over the tokens active before it (the last rows of them), for the FLOP count; 0
        where it computes none (the default: DASH scores the layer's own output, FastV and DART read
        layer ``l_s - 1``'s cached keys)."""
        return 0

    def select_before_projector(
        self, adapter: PatchesToProjector, output: Any, patches: torch.Tensor, arguments: dict[str, Any], ratio: float
    ) -> tuple[VisualEvidence, Any]:
        """The policy's rule inside one image feature call of ``adapter``'s model, before the projector (only
        where :attr:`selects_before_projector` and the family's ``selects_before_projector``).

        Args:
            adapter: the model's adapter.
            output: what the feature function returned (the tower's hidden states and the features).
            patches: ``(P, 1 + m)``: dominance then metric of every patch, ``[CLS]`` left out, encoder order.
            arguments: the feature function's arguments by name.
            ratio: ρ.

        Returns:
            The evidence over the call's visual tokens (``selected``: those kept) and the output with the
            features the LLM is to receive.
        """
        raise NotImplementedError(f"{type(self).__name__} does not select before the projector")


class ScoredHalting(HaltingMethod):
    """Halt, per sample, the ``floor(ratio * E)`` eligible tokens with the lowest keep-scores
    (``E`` eligible tokens, at a later stage those still active); at least one eligible token always
    stays active."""

    supports_stages = True

    @abstractmethod
    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        """Keep-scores, ``(batch, T)``: higher means more worth keeping active."""

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        return ~lowest(self.scores(inputs), inputs.eligible, halted_counts(ratio, inputs.eligible))

    def decide(self, inputs: DecisionInputs, ratio: float) -> Decision:
        kept_counts = [count - halted_count(ratio, count) for count in inputs.eligible_counts]
        return Decision(kept=self.keep(inputs, ratio), kept_counts=kept_counts)


def halted_count(ratio: float, eligible: int) -> int:
    """Tokens halted out of ``eligible``: ``floor(ratio * eligible)`` (always < eligible for ratio < 1).

    A tolerance of 1e-9 absorbs binary rounding, so that 0.29 * 100 halts 29, not 28.
    """
    return min(eligible, math.floor(ratio * eligible + 1e-9))


def halted_counts(ratio: float, eligible: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` long: :func:`halted_count` per sample of ``eligible`` ``(batch, T)``, computed on
    its device (the same float64 product and sum, so the host never waits for the GPU)."""
    totals = eligible.sum(dim=1)
    return torch.minimum(totals, (totals.double() * ratio + 1e-9).floor().long())


def lowest(scores: torch.Tensor, candidates: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(batch, T)`` bool: per sample, the ``counts[b]`` candidates with the lowest ``scores``
    (ties broken by position). ``scores`` ``(batch, T)``, ``candidates`` ``(batch, T)`` bool."""
    ascending = scores.float().masked_fill(~candidates, math.inf).argsort(dim=1, stable=True)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(ascending)
    rank = torch.empty_like(ascending).scatter_(1, ascending, positions)
    return candidates & (rank < counts[:, None])


def question_after_visual(eligible: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``(T,)`` bool: one sample's valid tokens after its last eligible one (the question and chat tail);
    ``eligible`` and ``valid`` ``(T,)`` bool."""
    positions = torch.arange(eligible.shape[0], device=eligible.device)
    last = torch.where(eligible, positions, -1).max()
    return valid & ~eligible & (positions > last)

"""Which prompt tokens stay active, and the compact left-padded layout they are gathered into."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActiveSet:
    """The active tokens of a batch after the halting decision.

    Attributes:
        active: ``(batch, T)`` bool, True where a token stays active (never on padding).
        index: ``(batch, K)`` long, for each compact slot the prompt position it holds, in
            prompt order; ``K`` is the largest per-sample active count. Samples with fewer
            active tokens are left-padded: their first slots hold an inactive position.
        slot_valid: ``(batch, K)`` bool, False on those padding slots.
    """

    active: torch.Tensor
    index: torch.Tensor
    slot_valid: torch.Tensor

    @property
    def counts(self) -> torch.Tensor:
        """``(batch,)`` long: active tokens per sample."""
        return self.slot_valid.sum(dim=1)


def halted_count(ratio: float, eligible: int) -> int:
    """Tokens halted out of ``eligible``: ``floor(ratio * eligible)`` (always < eligible for ratio < 1).

    A tolerance of 1e-9 absorbs binary rounding, so that 0.29 * 100 halts 29, not 28.
    """
    return min(eligible, math.floor(ratio * eligible + 1e-9))


def select_active(scores: torch.Tensor, eligible: torch.Tensor, valid: torch.Tensor, ratio: float) -> ActiveSet:
    """Halt, per sample, the ``floor(ratio * E)`` eligible tokens with the lowest scores.

    Args:
        scores: ``(batch, T)`` keep-scores; higher means more worth keeping.
        eligible: ``(batch, T)`` bool, tokens that may be halted (a subset of ``valid``).
        valid: ``(batch, T)`` bool, non-padding prompt tokens.
        ratio: ρ in [0, 1).

    Raises:
        ValueError: if ``ratio > 0`` and a sample has no eligible token.
    """
    eligible = eligible & valid
    eligible_counts = eligible.sum(dim=1).tolist()
    if ratio > 0 and min(eligible_counts) == 0:
        sample = eligible_counts.index(0)
        raise ValueError(
            f"sample {sample} has no token eligible for halting (check `scope` and the protected question)"
        )
    halt_counts = torch.tensor([halted_count(ratio, n) for n in eligible_counts], device=scores.device)
    ascending = scores.float().masked_fill(~eligible, math.inf).argsort(dim=1, stable=True)
    rank = torch.empty_like(ascending).scatter_(1, ascending, torch.arange(scores.shape[1], device=scores.device).expand_as(ascending))
    halted = eligible & (rank < halt_counts[:, None])
    active = valid & ~halted
    return compact_layout(active)


def compact_layout(active: torch.Tensor) -> ActiveSet:
    """Left-padded compact layout of the ``True`` positions of ``active`` (``(batch, T)`` bool)."""
    seq_len = active.shape[1]
    positions = torch.arange(seq_len, device=active.device).expand_as(active)
    order = torch.where(active, positions, -1).sort(dim=1, stable=True).indices
    counts = active.sum(dim=1)
    width = int(counts.max())
    index = order[:, seq_len - width :]
    slot_valid = torch.arange(width, device=active.device)[None, :] >= (width - counts)[:, None]
    return ActiveSet(active=active, index=index, slot_valid=slot_valid)

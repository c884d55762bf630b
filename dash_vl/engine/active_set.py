"""Which prompt tokens stay active, and the compact left-padded layout they are gathered into."""

from __future__ import annotations

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


def require_eligible(counts: list[int], ratio: float) -> None:
    """Raise if ``ratio > 0`` and a sample has no eligible token (``counts``: eligible tokens per sample)."""
    if ratio > 0 and min(counts) == 0:
        raise ValueError(
            f"sample {counts.index(0)} has no token eligible for halting (check `scope` and the protected question)"
        )


def compact_layout(active: torch.Tensor, width: int | None = None) -> ActiveSet:
    """Left-padded compact layout of the ``True`` positions of ``active`` (``(batch, T)`` bool).

    ``width`` is the largest per-sample count of ``active`` where the caller knows it; given, the
    host does not wait for the GPU to count.
    """
    seq_len = active.shape[1]
    positions = torch.arange(seq_len, device=active.device).expand_as(active)
    order = torch.where(active, positions, -1).sort(dim=1, stable=True).indices
    counts = active.sum(dim=1)
    width = int(counts.max()) if width is None else width
    index = order[:, seq_len - width :]
    slot_valid = torch.arange(width, device=active.device)[None, :] >= (width - counts)[:, None]
    return ActiveSet(active=active, index=index, slot_valid=slot_valid)

"""Paired comparisons: two settings scored on the same prompts.

The unit is the prompt: ``a[i]`` and ``b[i]`` are two settings' scores of prompt ``i``. The
difference of the settings is the mean of ``a - b``; its 95 % interval is the percentile bootstrap
(:data:`RESAMPLES` resamples of the prompts, drawn with replacement, seed :data:`SEED`, so every table
prints the same interval for the same scores). A claim "``a`` exceeds ``b`` by more than ``threshold``"
*holds* where the whole interval lies above ``threshold``, *fails* where it lies below, and is
*undecided* where it straddles it (or with fewer than two prompts, where there is no spread to resample).
:func:`ratio_interval` does the same for a ratio of sums (``dash-vl diagnose``'s attention shares).

``weights`` resample weighted units instead of prompts: a unit that stands for ``n`` prompts (a stored
mean of ``n`` scores) counts ``n`` times in each resample's mean. With few units (8 groups, say) the
percentile interval is too narrow, so such intervals are a lower bound of the uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
Verdict = Literal["holds", "fails", "undecided"]


@dataclass(frozen=True)
class PairedDifference:
    """The mean of ``a - b`` over ``n`` paired units and its bootstrap interval ``[low, high]``."""

    mean: float
    low: float
    high: float
    n: int

    def verdict(self, threshold: float = 0.0) -> Verdict:
        """``"holds"`` where the interval lies above ``threshold``, ``"fails"`` below it, else ``"undecided"``."""
        return verdict_of(self.low, self.high, threshold, self.n)

    def cell(self, threshold: float = 0.0) -> str:
        """Markdown: ``+0.036 [+0.004, +0.069] holds``."""
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] {self.verdict(threshold)}"


def verdict_of(low: float, high: float, threshold: float, n: int, above: bool = True) -> Verdict:
    """The verdict on "the statistic is above ``threshold``" (below it where not ``above``) from its
    interval ``[low, high]`` over ``n`` units: ``"undecided"`` where the interval holds the threshold or ``n < 2``."""
    if n < 2 or low <= threshold <= high:
        return "undecided"
    return "holds" if (low > threshold) == above else "fails"


def bootstrap_interval(
    values: torch.Tensor, weights: torch.Tensor, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float]:
    """The ``level`` percentile interval of the weighted mean of ``values`` ``(n,)`` (``weights`` ``(n,)``),
    over ``resamples`` resamples of the ``n`` units with replacement."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(values), (resamples, len(values)), generator=generator)
    means = (values[picks] * weights[picks]).sum(dim=1) / weights[picks].sum(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype)).tolist()
    return low, high


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float],
    resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
) -> tuple[float, float]:
    """The ``level`` percentile interval of ``sum(numerator) / sum(denominator)``, the units (pairs of
    one numerator and one denominator, at least one, the denominators positive) resampled together."""
    if len(numerator) != len(denominator) or not numerator or min(denominator) <= 0:
        raise ValueError(f"need paired units with positive denominators, got {len(numerator)} and {list(denominator)}")
    top = torch.tensor(numerator, dtype=torch.float64)
    bottom = torch.tensor(denominator, dtype=torch.float64)
    return bootstrap_interval(top / bottom, bottom, resamples, seed, level)


def paired_difference(
    a: Sequence[float], b: Sequence[float], weights: Sequence[float] | None = None,
    resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
) -> PairedDifference:
    """:class:`PairedDifference` of ``a`` minus ``b``, paired by position (``weights``: units' prompt counts).

    Raises:
        ValueError: on no units, ``a`` and ``b`` (or ``weights``) of different lengths, a weight that is not
            positive, ``resamples`` under 1 or ``level`` outside (0, 1).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"a and b must pair the same units (at least one), got {len(a)} and {len(b)}")
    if weights is not None and (len(weights) != len(a) or min(weights) <= 0):
        raise ValueError(f"weights must be {len(a)} positive numbers, got {list(weights)}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"resamples must be at least 1 and level in (0, 1), got {resamples} and {level}")
    difference = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    weight = torch.ones_like(difference) if weights is None else torch.tensor(weights, dtype=torch.float64)
    mean = float((difference * weight).sum() / weight.sum())
    low, high = bootstrap_interval(difference, weight, resamples, seed, level)
    return PairedDifference(mean, low, high, len(a))

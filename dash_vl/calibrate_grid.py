"""The calibration grid's defaults and the quality budget of :mod:`dash_vl.calibrate`, apart from the
measuring code so that the CLI can show them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dash_vl.calibrate import CalibrationPoint

DEFAULT_START_LAYERS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""Candidate decision layers, as fractions of the depth."""
DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
"""Candidate ratios ρ."""


@dataclass(frozen=True)
class QualityBudget:
    """How much worse than the unmodified model a pick may be; unset limits are not checked.

    Attributes:
        max_perplexity_increase: relative, e.g. ``0.05`` for +5 % continuation perplexity.
        max_kl: mean next-token KL divergence from the unmodified model, nats per token.

    Raises:
        ValueError: if both are unset or either is negative.
    """

    max_perplexity_increase: float | None = 0.05
    max_kl: float | None = None

    def __post_init__(self) -> None:
        if self.max_perplexity_increase is None and self.max_kl is None:
            raise ValueError("a quality budget needs max_perplexity_increase, max_kl or both")
        for name in ("max_perplexity_increase", "max_kl"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    def allows(self, point: CalibrationPoint) -> bool:
        ppl_ok = self.max_perplexity_increase is None or point.perplexity_increase <= self.max_perplexity_increase
        kl_ok = self.max_kl is None or point.kl <= self.max_kl
        return ppl_ok and kl_ok

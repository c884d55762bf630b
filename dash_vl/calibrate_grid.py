"""The calibration grid (its defaults and its points' configs) and the quality budget of
:mod:`dash_vl.calibrate`, apart from the measuring code so that the CLI can show them without importing torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dash_vl.config import HaltingConfig

if TYPE_CHECKING:
    from dash_vl.calibrate import CalibrationPoint

DEFAULT_START_LAYERS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
"""Candidate decision layers, as fractions of the depth."""
DEFAULT_RATIOS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
"""Candidate ratios ρ."""

Schedule = tuple[int, ...]
"""Every decision layer of a grid point, ascending: ``l_s`` then the resolved ``stage_layers``."""


def grid(
    method: str,
    start_layers: Sequence[int | float],
    ratios: Sequence[float],
    stage_layers: Sequence[int | float] | None,
    num_layers: int,
) -> dict[tuple[Schedule, float], HaltingConfig]:
    """The config of every ``(start_layer, ratio)`` candidate (continuation protected), keyed by its whole
    decision schedule on a ``num_layers``-layer model and ρ; candidates equal after rounding appear once.

    ``stage_layers`` (``None``: the method's default) is the same for every point: only the first decision
    layer moves.

    Raises:
        ValueError: if the method halts only visual tokens (the calibration prompts are text, so nothing
            would be halted), if a start layer does not lie before the first of ``stage_layers``, or on
            knobs :class:`HaltingConfig` rejects.
    """
    configs: dict[tuple[Schedule, float], HaltingConfig] = {}
    for start in start_layers:
        for ratio in ratios:
            config = HaltingConfig(
                method=method, ratio=ratio, start_layer=start, stage_layers=stage_layers, question="protected"
            )
            if config.scope == "visual":
                raise ValueError(
                    f"method {method!r} halts only visual tokens (scope 'visual') and the calibration prompts are "
                    "text: nothing would be halted; calibrate a method of scope 'all' (dash, its ablations, "
                    "dash_multi, snapkv)"
                )
            try:
                schedule = tuple(config.decision_layers(num_layers))
            except ValueError as error:
                raise ValueError(
                    f"start layer {start!r} gives method {method!r} no decision schedule with stage_layers "
                    f"{config.stage_layers} on a {num_layers}-layer model ({error}); every start layer must lie "
                    "before the first of stage_layers: pass lower start layers, later stage_layers, or stage_layers () "
                    "for one decision"
                ) from error
            configs.setdefault((schedule, float(ratio)), config)
    return configs


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

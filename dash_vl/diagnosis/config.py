"""The knobs of a diagnosis (:class:`DiagnosisConfig`), apart from the run (:mod:`dash_vl.diagnosis.run`) so
that ``dash-vl diagnose`` reads their defaults and help, and checks them, without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dash_vl.config import SCOPES, HaltingConfig, Scope

HELP = "help"
"""The metadata key of a knob's one-line help (``dash-vl diagnose --help``)."""


def knob(default: Any, help_text: str) -> Any:
    """A :class:`DiagnosisConfig` field with its default and its one-line help."""
    return field(default=default, metadata={HELP: help_text})


DEFAULT_START_LAYERS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6)


def require_number(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    """Raise unless ``value`` is a number (an ``int`` where ``integer``) in ``[low, high]``."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an int" if integer else "a number"
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class DiagnosisConfig:
    """What the diagnosis measures and how strict its verdict is.

    Attributes:
        start_layers: candidate decision layers ``l_s``: ``int`` layer indices (at least 1) or
            ``float`` fractions of the depth in (0, 1) (``floor(f * L)``, as :class:`HaltingConfig`);
            each must leave a later layer.
        ratio: ρ in (0, 1): the share of eligible tokens DASH would halt, compared with random sets
            of that size, and at which the sinks are judged.
        scope: ``"all"`` (every prompt token but the last is eligible) or ``"visual"``.
        small_fraction: a token's update is "near zero" below this fraction of its layer's largest, in (0, 1).
        groups: how many ``Δattn`` rank groups (10: deciles), at least 2.
        random_groupings: random permutations behind the random groups and sets, at least 1.
        margin: the verdict's margin in [0, 1): premise (b) holds at ``l_s`` where DASH's halted
            tokens receive less than ``1 - margin`` times the attention random ones receive.
        sink_norm_factor: a sink's ``‖h_t‖₂`` exceeds this multiple of its layer's median (> 1) ...
        sink_attention_share: ... or it receives at least this share of all queries' attention, in (0, 1].
        chunk: query rows per step of the received-attention computation, at least 1.
        seed: seed of the random groups.
    """

    start_layers: tuple[int | float, ...] = knob(DEFAULT_START_LAYERS, "candidate decision layers: indices, or fractions of the depth")
    ratio: float = knob(0.5, "rho whose halted set is compared with random, in (0, 1)")
    scope: Scope = knob("all", "eligible tokens")
    small_fraction: float = knob(0.05, "an update is near zero below this fraction of its layer's largest")
    groups: int = knob(10, "rank groups of the attention updates (10: deciles)")
    random_groupings: int = knob(20, "random permutations behind the random groups and sets")
    margin: float = knob(0.1, "verdict margin: holds below (1 - margin) x random")
    sink_norm_factor: float = knob(10.0, "a sink's hidden-state norm exceeds this multiple of its layer's median")
    sink_attention_share: float = knob(0.1, "... or it receives at least this share of all queries' attention")
    chunk: int = knob(128, "query rows per step of the attention computation")
    seed: int = knob(0, "seed of the random groups (from the CLI, of the built-in prompts too)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_layers", tuple(self.start_layers))
        if not self.start_layers:
            raise ValueError("start_layers must name at least one decision layer")
        for layer in self.start_layers:
            if isinstance(layer, float):
                require_number("start_layers (a fraction)", layer, 1e-9, 1 - 1e-9)
            else:
                require_number("start_layers (a layer index)", layer, 1, float("inf"), integer=True)
        require_number("ratio", self.ratio, 1e-9, 1 - 1e-9)
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        require_number("small_fraction", self.small_fraction, 1e-9, 1 - 1e-9)
        require_number("groups", self.groups, 2, float("inf"), integer=True)
        require_number("random_groupings", self.random_groupings, 1, float("inf"), integer=True)
        require_number("margin", self.margin, 0.0, 1 - 1e-9)
        require_number("sink_norm_factor", self.sink_norm_factor, 1 + 1e-9, float("inf"))
        require_number("sink_attention_share", self.sink_attention_share, 1e-9, 1.0)
        require_number("chunk", self.chunk, 1, float("inf"), integer=True)
        require_number("seed", self.seed, 0, float("inf"), integer=True)

    def decision_layers(self, num_layers: int) -> list[int]:
        """The distinct ``l_s`` of :attr:`start_layers` for a ``num_layers``-layer model, ascending.

        Raises:
            ValueError: if one leaves no later layer (``l_s >= L - 1``).
        """
        layers = sorted({HaltingConfig(start_layer=layer).decision_layer(num_layers) for layer in self.start_layers})
        if layers[-1] >= num_layers - 1:
            raise ValueError(
                f"start_layers must leave a later layer: {layers[-1]} is not below {num_layers - 1} "
                f"for a {num_layers}-layer model"
            )
        return layers

"""``dash_vl.diagnose``: do DASH's premises hold for this model on these prompts?

    import dash_vl
    result = dash_vl.diagnose(model, prompts, tokenizer=tokenizer)
    print(result.verdict)

One unmodified forward pass per prompt (:mod:`dash_vl.diagnosis.layer_trace`), nothing halted, then the
statistics of :mod:`dash_vl.diagnosis.stats`: convergence of the attention updates, whether
low-``Δattn`` tokens are the ones later layers ignore, visual against text tokens, attention
sinks. :func:`dash_vl.diagnosis.files.write_diagnosis` writes the JSON, CSV and plots.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import transformers
from torch import nn
from tqdm import tqdm

from dash_vl.adapters import adapter_for
from dash_vl.config import SCOPES, HaltingConfig, Scope
from dash_vl.diagnosis.layer_trace import trace_prompt
from dash_vl.diagnosis.stats import (
    ATTENTION_VIEWS,
    LayerConvergence,
    LayerModality,
    Redundancy,
    Sink,
    convergence,
    modality,
    redundancy,
    sinks,
)
from dash_vl.engine.masks import check_implementation
from dash_vl.version import __version__

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

    start_layers: tuple[int | float, ...] = DEFAULT_START_LAYERS
    ratio: float = 0.5
    scope: Scope = "all"
    small_fraction: float = 0.05
    groups: int = 10
    random_groupings: int = 20
    margin: float = 0.1
    sink_norm_factor: float = 10.0
    sink_attention_share: float = 0.1
    chunk: int = 128
    seed: int = 0

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


@dataclass(frozen=True)
class Diagnosis:
    """Every number of one diagnosis and its verdict (see :mod:`dash_vl.diagnosis.stats` for each field).

    Attributes:
        model: the model's name as the caller gave it.
        num_layers: ``L``.
        prompt_tokens: tokens per prompt.
        config: the options.
        convergence: one row per layer.
        redundancy: one entry per candidate ``l_s``.
        modality: one row per layer; ``None`` without both visual and text tokens.
        sinks: the attention sinks found, with what DASH would do at every ``l_s``.
        verdict: one line: the ``l_s`` where premise (b) holds by the margin, counting all queries
            and counting the last token's attention, and every ratio.
        environment: versions and the date of the run.
    """

    model: str
    num_layers: int
    prompt_tokens: list[int]
    config: DiagnosisConfig
    convergence: list[LayerConvergence]
    redundancy: list[Redundancy]
    modality: list[LayerModality] | None
    sinks: list[Sink]
    verdict: str
    environment: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(model: str, results: Sequence[Redundancy], config: DiagnosisConfig, prompts: int) -> str:
    """One line: at which candidate ``l_s`` DASH's halted set gets less than ``1 - margin`` of a random
    set's attention in later layers, counting all queries and counting the last token's attention."""

    def held(view: str) -> list[int]:
        return [result.start_layer for result in results if result.holds[view]]

    ratios = ", ".join(
        f"{r.start_layer}: " + "/".join(f"{r.share_ratio[view]:.2f}" for view in ATTENTION_VIEWS) for r in results
    )
    sure = "; ".join(
        f"{r.start_layer}: " + ", ".join(
            f"{view} {r.share_ratio[view]:.2f} [{r.share_ratio_interval[view][0]:.2f}, "
            f"{r.share_ratio_interval[view][1]:.2f}] {r.interval_verdict[view]}"
            for view in ("all_queries", "last_query")
        )
        for r in results
    )
    return (
        f"{model} ({prompts} prompts): stability implies redundancy at l_s {held('all_queries')} of "
        f"{[r.start_layer for r in results]} counting all queries, at l_s {held('last_query')} counting the last "
        f"token's attention (holds where the attention later layers give DASH's rho={config.ratio} halted tokens is "
        f"below {1 - config.margin:.2f} x a random set's; all/last/per-visible-query ratio per l_s: {ratios}). "
        f"How sure, by a 95 % bootstrap over the prompts (holds: the whole interval below "
        f"{1 - config.margin:.2f}; undecided with one prompt): {sure}"
    )


def diagnose(
    model: nn.Module,
    prompts: Sequence[Mapping[str, torch.Tensor]],
    config: DiagnosisConfig | None = None,
    tokenizer: Any = None,
    name: str | None = None,
    progress: bool = True,
) -> Diagnosis:
    """Diagnose DASH's premises on ``model`` (any family of :data:`dash_vl.adapters.ADAPTERS`).

    Args:
        model: the HF model, unmodified.
        prompts: one model input per prompt, batch 1, unpadded (what the tokenizer or processor
            returns: ``input_ids``, and for a VLM its pixel values and grids), on the model's device.
        config: the options (default :class:`DiagnosisConfig`).
        tokenizer: decodes the sinks' tokens where given.
        name: the model's name in the verdict (default: its class name).
        progress: show a tqdm bar over the prompts.

    Raises:
        ValueError: on no prompts, a batched or padded prompt, an unsupported attention
            implementation, ``scope="visual"`` on a text-only model, or candidate layers out of range.
    """
    config = config or DiagnosisConfig()
    if not prompts:
        raise ValueError("prompts must hold at least one model input")
    adapter = adapter_for(model)
    check_implementation(adapter.attn_implementation)
    if config.scope == "visual" and not adapter.has_visual_tokens:
        raise ValueError(f"scope='visual' needs a model with visual tokens; {type(model).__name__} is text-only")
    num_layers = len(adapter.layers)
    start_layers = config.decision_layers(num_layers)
    name = name or type(model).__name__
    traces = [
        trace_prompt(adapter, prompt, config.chunk)
        for prompt in tqdm(prompts, desc=f"diagnose {name}", unit="prompt", disable=not progress)
    ]
    results = [
        redundancy(
            traces, layer, config.scope, config.ratio, config.groups, config.random_groupings, config.margin, config.seed
        )
        for layer in start_layers
    ]
    token_text = None if tokenizer is None else (lambda token_id: tokenizer.decode([token_id]))
    return Diagnosis(
        model=name,
        num_layers=num_layers,
        prompt_tokens=[trace.num_tokens for trace in traces],
        config=config,
        convergence=convergence(traces, config.small_fraction),
        redundancy=results,
        modality=modality(traces),
        sinks=sinks(
            traces, start_layers, config.scope, config.ratio, config.sink_norm_factor, config.sink_attention_share,
            token_text,
        ),
        verdict=verdict(name, results, config, len(traces)),
        environment=dict(
            dash_vl=__version__, torch=torch.__version__, transformers=transformers.__version__,
            date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        ),
    )

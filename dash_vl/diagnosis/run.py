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
from dash_vl.diagnosis.config import DiagnosisConfig
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

"""The numbers of a diagnosis, computed from the layer traces of its prompts (:mod:`dash_vl.diagnosis.layer_trace`).

Four questions, one function each:

* :func:`convergence`: do tokens converge? Per layer, the distribution of ``Δattn = ‖U_t‖₂``.
* :func:`redundancy`: does stability imply redundancy? For a decision layer ``l_s``, the attention
  that later layers give to tokens grouped by their ``Δattn`` rank at ``l_s``, against random groups,
  and the share of it DASH's halted tokens would take, against random sets.
* :func:`modality`: do visual tokens saturate earlier than text tokens?
* :func:`sinks`: which tokens are attention sinks, and would DASH halt them?

Statistics are computed per prompt and then averaged over prompts (every prompt weighs the same),
except the modality medians, which pool the tokens of all prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dash_vl.diagnosis.layer_trace import LayerTrace
from dash_vl.methods.base import halted_count, lowest
from dash_vl.suites.paired_stats import Verdict, ratio_interval, verdict_of


def mean_over(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def skewness(values: torch.Tensor) -> float:
    """Fisher's moment skewness ``E[(x - μ)³] / σ³`` of a 1-D tensor (0 where ``σ = 0``)."""
    centred = values - values.mean()
    spread = centred.pow(2).mean().sqrt()
    return 0.0 if spread == 0 else float(centred.pow(3).mean() / spread**3)


@dataclass(frozen=True)
class LayerConvergence:
    """Layer ``layer``'s attention updates, averaged over prompts.

    Attributes:
        median_delta_attn: median ``‖U_t‖₂`` (the model's hidden units).
        share_near_zero: fraction of tokens whose ``‖U_t‖₂`` is below ``small_fraction`` of the layer's largest.
        skewness: skewness of ``‖U_t‖₂`` over the prompt's tokens.
        median_relative_update: median ``‖U_t‖₂ / ‖h_t‖₂`` (``h_t`` entering the layer).
        median_hidden_norm: median ``‖h_t‖₂``.
    """

    layer: int
    median_delta_attn: float
    share_near_zero: float
    skewness: float
    median_relative_update: float
    median_hidden_norm: float


def convergence(traces: Sequence[LayerTrace], small_fraction: float) -> list[LayerConvergence]:
    """One :class:`LayerConvergence` per layer."""
    rows = []
    for layer in range(traces[0].delta_attn.shape[0]):
        def averaged(statistic: Callable[[LayerTrace], float]) -> float:
            return mean_over([statistic(trace) for trace in traces])

        rows.append(LayerConvergence(
            layer=layer,
            median_delta_attn=averaged(lambda t: float(t.delta_attn[layer].median())),
            share_near_zero=averaged(
                lambda t: float((t.delta_attn[layer] < small_fraction * t.delta_attn[layer].max()).float().mean())
            ),
            skewness=averaged(lambda t: skewness(t.delta_attn[layer])),
            median_relative_update=averaged(lambda t: float((t.delta_attn[layer] / t.hidden_norm[layer]).median())),
            median_hidden_norm=averaged(lambda t: float(t.hidden_norm[layer].median())),
        ))
    return rows


def eligible_tokens(trace: LayerTrace, scope: str) -> torch.Tensor:
    """``(T,)`` bool: the tokens DASH may halt, as the engine chooses them with ``question="halted"``:
    all but the last prompt token, and only visual ones under ``scope="visual"``."""
    eligible = torch.ones(trace.num_tokens, dtype=torch.bool)
    eligible[-1] = False
    if scope == "visual":
        if trace.visual is None:
            raise ValueError("scope='visual' needs a model with visual tokens")
        eligible &= trace.visual
    return eligible


def ranks_from_bottom(scores: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """``(T,)`` long: each eligible token's rank by ascending score (0 = lowest; ties by position), -1 elsewhere."""
    order = scores.float().masked_fill(~eligible, torch.inf).argsort(stable=True)
    ranks = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
    return torch.where(eligible, ranks, -1)


ATTENTION_VIEWS: tuple[str, ...] = ("all_queries", "last_query", "per_visible_query")
"""How the attention a token receives is counted: summed over all queries (what halting removes
from later layers), from the prompt's last token only (the one that starts the answer), or summed
over queries and divided by how many queries can see the token (``T - t``: position factored out)."""


def attention_view(trace: LayerTrace, layer: int, view: str) -> torch.Tensor:
    """``(T,)``: the attention each token receives in ``layer``, counted as :data:`ATTENTION_VIEWS` says."""
    if view == "last_query":
        return trace.last_query[layer]
    received = trace.received[layer]
    if view == "per_visible_query":
        return received / torch.arange(trace.num_tokens, 0, -1)
    return received


@dataclass(frozen=True)
class HaltedShare:
    """Share of a layer's attention (one of :data:`ATTENTION_VIEWS`) landing on DASH's halted tokens,
    and on random sets of as many eligible tokens (mean over draws)."""

    dash: float
    random: float


@dataclass(frozen=True)
class LaterLayerAttention:
    """Attention that layer ``layer > l_s`` gives to the eligible tokens, averaged over prompts.

    Attributes:
        decile_relative: per ``Δattn`` group at ``l_s`` (lowest first), the group's mean received
            attention (all queries) over the mean of all eligible tokens (1 = average).
        random_low, random_high: the 5th and 95th percentile of the same for random groups of the
            same sizes (the spread chance alone gives).
        halted: per attention view, the share landing on the tokens DASH halts at ``ratio``, and on random sets.
    """

    layer: int
    decile_relative: list[float]
    random_low: float
    random_high: float
    halted: dict[str, HaltedShare]


@dataclass(frozen=True)
class Redundancy:
    """Whether the tokens DASH would halt at ``start_layer`` are the ones later layers ignore.

    Attributes:
        start_layer: the candidate decision layer ``l_s``.
        halted: per attention view, :class:`LaterLayerAttention`'s shares averaged over layers ``> l_s``.
        share_ratio: per attention view, ``dash / random`` of :attr:`halted`: below 1, DASH's halted
            tokens receive less attention than random ones.
        lowest_group_relative: the lowest-``Δattn`` group's relative attention, averaged over layers ``> l_s``.
        holds: per attention view, ``share_ratio < 1 - margin``.
        layers: one :class:`LaterLayerAttention` per layer ``> l_s``.
        share_ratio_interval: per attention view, the 95 % bootstrap interval ``[low, high]`` of
            :attr:`share_ratio` over the prompts (each prompt's shares averaged over layers ``> l_s``;
            :func:`dash_vl.suites.paired_stats.ratio_interval`).
        interval_verdict: per attention view, ``"holds"`` where the whole interval is below ``1 - margin``,
            ``"fails"`` where it is above, ``"undecided"`` where it holds ``1 - margin`` or there is one prompt.
    """

    start_layer: int
    halted: dict[str, HaltedShare]
    share_ratio: dict[str, float]
    lowest_group_relative: float
    holds: dict[str, bool]
    layers: list[LaterLayerAttention]
    share_ratio_interval: dict[str, list[float]]
    interval_verdict: dict[str, Verdict]


def group_means(received: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    """``(count,)``: mean of ``received`` ``(n,)`` per group label in ``groups`` ``(n,)``."""
    totals = torch.zeros(count).index_add_(0, groups, received)
    return totals / torch.bincount(groups, minlength=count).clamp(min=1)


def ratio_of(share: HaltedShare) -> float:
    return share.dash / share.random if share.random > 0 else float("nan")


def redundancy(
    traces: Sequence[LayerTrace], start_layer: int, scope: str, ratio: float, groups: int, random_groupings: int,
    margin: float, seed: int,
) -> Redundancy:
    """:class:`Redundancy` of decision layer ``start_layer`` over ``traces``.

    Groups are ``groups`` equal slices of the eligible tokens' ``Δattn`` ranks at ``start_layer``;
    the random groups and sets are ``random_groupings`` seeded permutations of the same tokens.
    """
    generator = torch.Generator().manual_seed(seed)
    num_layers = traces[0].delta_attn.shape[0]
    later = range(start_layer + 1, num_layers)
    per_layer: dict[int, list[tuple[torch.Tensor, float, float, dict[str, HaltedShare]]]] = {layer: [] for layer in later}
    for trace in traces:
        eligible = eligible_tokens(trace, scope)
        count = int(eligible.sum())
        if count < groups:
            raise ValueError(f"a prompt has {count} eligible tokens, fewer than groups={groups}")
        rank = ranks_from_bottom(trace.delta_attn[start_layer], eligible)[eligible]
        label = rank * groups // count
        halted = halted_count(ratio, count)
        dash_halted = lowest(trace.delta_attn[start_layer][None], eligible[None], torch.tensor([halted]))[0]
        shuffles = [torch.randperm(count, generator=generator) for _ in range(random_groupings)]
        for layer in later:
            shares = {}
            for view in ATTENTION_VIEWS:
                attention = attention_view(trace, layer, view)
                total, eligible_attention = attention.sum(), attention[eligible]
                shares[view] = HaltedShare(
                    float(attention[dash_halted].sum() / total),
                    mean_over([float(eligible_attention[s[:halted]].sum() / total) for s in shuffles]),
                )
            received = trace.received[layer][eligible]
            average = received.mean()
            random_relative = torch.cat([group_means(received, label[s], groups) for s in shuffles]) / average
            low, high = torch.quantile(random_relative, torch.tensor([0.05, 0.95])).tolist()
            per_layer[layer].append((group_means(received, label, groups) / average, low, high, shares))

    def pooled(shares: Sequence[dict[str, HaltedShare]]) -> dict[str, HaltedShare]:
        return {
            view: HaltedShare(mean_over([s[view].dash for s in shares]), mean_over([s[view].random for s in shares]))
            for view in ATTENTION_VIEWS
        }

    layers = [
        LaterLayerAttention(
            layer=layer,
            decile_relative=torch.stack([row[0] for row in rows]).mean(dim=0).tolist(),
            random_low=mean_over([row[1] for row in rows]),
            random_high=mean_over([row[2] for row in rows]),
            halted=pooled([row[3] for row in rows]),
        )
        for layer, rows in per_layer.items()
    ]
    halted_shares = pooled([layer.halted for layer in layers])
    share_ratio = {view: ratio_of(share) for view, share in halted_shares.items()}
    per_prompt = [pooled([per_layer[layer][prompt][3] for layer in later]) for prompt in range(len(traces))]
    intervals = {
        view: list(ratio_interval([s[view].dash for s in per_prompt], [s[view].random for s in per_prompt]))
        if all(s[view].random > 0 for s in per_prompt) else [float("nan")] * 2
        for view in ATTENTION_VIEWS
    }
    return Redundancy(
        start_layer=start_layer, halted=halted_shares, share_ratio=share_ratio,
        lowest_group_relative=mean_over([layer.decile_relative[0] for layer in layers]),
        holds={view: value < 1 - margin for view, value in share_ratio.items()}, layers=layers,
        share_ratio_interval=intervals,
        interval_verdict={
            view: verdict_of(low, high, 1 - margin, len(traces), above=False) for view, (low, high) in intervals.items()
        },
    )


@dataclass(frozen=True)
class LayerModality:
    """Median ``‖U_t‖₂ / ‖h_t‖₂`` of visual and of text tokens in layer ``layer`` (tokens of all prompts pooled)."""

    layer: int
    visual_median_relative_update: float
    text_median_relative_update: float


def modality(traces: Sequence[LayerTrace]) -> list[LayerModality] | None:
    """One :class:`LayerModality` per layer; ``None`` unless the prompts hold both visual and text tokens."""
    if any(trace.visual is None for trace in traces):
        return None
    visual = torch.cat([trace.visual for trace in traces])
    if visual.all() or not visual.any():
        return None
    relative = torch.cat([trace.delta_attn / trace.hidden_norm for trace in traces], dim=1)
    return [
        LayerModality(layer, float(row[visual].median()), float(row[~visual].median()))
        for layer, row in enumerate(relative)
    ]


@dataclass(frozen=True)
class SinkDecision:
    """What DASH at decision layer ``start_layer`` would do with a sink.

    Attributes:
        rank: its ``Δattn`` rank from the bottom among ``eligible`` tokens; ``None`` if not eligible.
        halted: whether DASH halts it at the diagnosis ratio (``rank < floor(ratio * eligible)``).
    """

    start_layer: int
    rank: int | None
    eligible: int
    halted: bool


@dataclass(frozen=True)
class Sink:
    """A token with a massive residual norm or a large share of the attention.

    Attributes:
        prompt: index of its prompt.
        position: its position in the prompt.
        token: its text where a tokenizer was given, else its id (``None`` without ids).
        visual: whether it is a visual token.
        norm_factor: its largest ``‖h_t‖₂`` over the layer's median, across layers.
        peak_layer: the layer of that largest factor.
        received_share: attention it receives over the number of queries, averaged over layers.
        decisions: one :class:`SinkDecision` per candidate decision layer.
    """

    prompt: int
    position: int
    token: str | int | None
    visual: bool
    norm_factor: float
    peak_layer: int
    received_share: float
    decisions: list[SinkDecision]


def sinks(
    traces: Sequence[LayerTrace], start_layers: Sequence[int], scope: str, ratio: float, norm_factor: float,
    attention_share: float, token_text: Callable[[int], str] | None = None,
) -> list[Sink]:
    """Per prompt, the tokens whose ``‖h_t‖₂`` exceeds ``norm_factor`` times the layer's median in some
    layer, or that receive at least ``attention_share`` of all queries' attention averaged over layers."""
    found = []
    for index, trace in enumerate(traces):
        factors = trace.hidden_norm / trace.hidden_norm.median(dim=1, keepdim=True).values
        peak_factor, peak_layer = factors.max(dim=0)
        share = trace.received.mean(dim=0) / trace.num_tokens
        eligible = eligible_tokens(trace, scope)
        count = int(eligible.sum())
        ranks = {layer: ranks_from_bottom(trace.delta_attn[layer], eligible) for layer in start_layers}
        for position in ((peak_factor >= norm_factor) | (share >= attention_share)).nonzero().flatten().tolist():
            token_id = None if trace.input_ids is None else int(trace.input_ids[position])
            decisions = []
            for layer in start_layers:
                rank = int(ranks[layer][position])
                decisions.append(SinkDecision(
                    layer, None if rank < 0 else rank, count, 0 <= rank < halted_count(ratio, count)
                ))
            found.append(Sink(
                prompt=index, position=position,
                token=token_text(token_id) if token_text is not None and token_id is not None else token_id,
                visual=bool(trace.visual[position]) if trace.visual is not None else False,
                norm_factor=float(peak_factor[position]), peak_layer=int(peak_layer[position]),
                received_share=float(share[position]), decisions=decisions,
            ))
    return found

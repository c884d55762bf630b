"""The FLOP count behind ``HaltingReport.relative_flops``: query-key pairs as a mask allows them,
a halted prefill of a model with sliding-window layers counted pair by pair, and the scoring work
of policies that score with the decision layer's own projections."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from dash_vl import Halting
from dash_vl.engine.prefill_flops import LayerShapes, attended_pairs
from tests.engine.test_engine_gemma3 import CONFIG
from tests.engine.test_stages import text_model
from tests.text_cases import text_prompts


def pairs_by_mask(keys: torch.Tensor, queries: torch.Tensor, window: int | None) -> int:
    """The slow count: every (query, key) pair the causal (windowed) mask lets through."""
    distance = queries[:, None] - keys[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    return int(allowed.sum())


@pytest.mark.parametrize("window", [None, 1, 3, 8, 1000])
def test_attended_pairs_counts_what_the_mask_allows(window):
    generator = torch.Generator().manual_seed(0)
    keys = torch.randperm(60, generator=generator)[:35].sort().values
    queries = keys[torch.randperm(35, generator=generator)[:20]].sort().values
    assert attended_pairs(keys, queries, window) == pairs_by_mask(keys, queries, window)
    assert attended_pairs(keys, keys[:0], window) == 0


def layer_flops_by_mask(shapes: LayerShapes, keys: torch.Tensor, window: int | None, mlp_tokens: int) -> float:
    attention = 4.0 * shapes.heads * shapes.head_dim * pairs_by_mask(keys, keys, window)
    return shapes.projection_flops(len(keys)) + attention + shapes.mlp_flops(mlp_tokens)


@pytest.mark.parametrize("method", ["dash", "fastv"])
def test_relative_flops_of_a_sliding_window_model_counts_windowed_pairs(method):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Gemma3TextConfig(**CONFIG, attn_implementation="sdpa")).eval()
    prompts = text_prompts(2)
    start = 2
    with Halting(model, method=method, ratio=0.5, start_layer=start, scope="all") as halting, torch.no_grad():
        model(**prompts)
    report = halting.last_report
    shapes = halting.engine.shapes
    windows = [CONFIG["sliding_window"] if kind == "sliding_attention" else None for kind in CONFIG["layer_types"]]
    halted = full = windowless = 0.0
    for valid, kept in zip(prompts["attention_mask"].bool(), report.kept_positions):
        context, kept = valid.nonzero().flatten(), torch.tensor(kept)
        per_layer = [layer_flops_by_mask(shapes, context, window, len(context)) for window in windows]
        full += sum(per_layer)
        windowless += len(windows) * layer_flops_by_mask(shapes, context, None, len(context))
        if method == "dash":  # attention over all tokens at l_s, MLP on the kept ones
            decision = layer_flops_by_mask(shapes, context, windows[start], len(kept))
        else:  # FastV decides on l_s's input: l_s runs on the kept tokens only
            decision = layer_flops_by_mask(shapes, kept, windows[start], len(kept))
        halted += sum(per_layer[:start]) + decision + sum(
            layer_flops_by_mask(shapes, kept, window, len(kept)) for window in windows[start + 1 :]
        )
    assert math.isclose(report.relative_flops, halted / full, rel_tol=1e-12)
    assert not math.isclose(full, windowless, rel_tol=1e-3)  # the window binds on these prompts


@pytest.mark.parametrize("method,queries", [("snapkv", 4), ("pyramiddrop", 1)])
def test_scoring_work_of_a_policy_that_scores_with_the_decision_layer_is_counted(method, queries):
    """SnapKV (a window of 4 rows) and PyramidDrop (the last row) score the tokens active before each of
    their two decisions with the decision layer's own projections: those K and Q projections and the
    rows' scores are counted at the decision layer, over the layers' work on the kept tokens."""
    model, prompts = text_model("qwen2"), text_prompts(2)
    knobs = dict(observation_window=queries) if method == "snapkv" else {}
    with Halting(model, method=method, ratio=0.5, start_layer=1, stage_layers=(3,), scope="all", **knobs) as halting:
        with torch.no_grad():
            model(**prompts)
    report, shapes = halting.last_report, halting.engine.shapes
    halted = full = 0.0
    for valid, *kept in zip(prompts["attention_mask"].bool(), *report.kept_positions_per_stage):
        context = valid.nonzero().flatten()
        sets = [context] + [torch.tensor(stage) for stage in kept]
        for layer, stage in enumerate([0, 1, 1, 2, 2]):
            full += layer_flops_by_mask(shapes, context, None, len(context))
            halted += layer_flops_by_mask(shapes, sets[stage], None, len(sets[stage]))
            if layer in (1, 3):
                before = sets[stage - 1]
                projections = 2.0 * shapes.hidden * shapes.head_dim * (len(before) * shapes.kv_heads + queries * shapes.heads)
                halted += projections + 2.0 * shapes.heads * shapes.head_dim * pairs_by_mask(before, before[-queries:], None)
    assert math.isclose(report.relative_flops, halted / full, rel_tol=1e-12)

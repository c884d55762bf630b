"""The FLOP count behind ``HaltingReport.relative_flops``: query-key pairs as a mask allows them,
a halted prefill of a model with sliding-window layers counted pair by pair, the scoring work
of policies that score with the decision layer's own projections, and Qwen3.5's linear-attention
(gated delta net) and gated full-attention layers counted from their weights."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, Gemma3TextConfig, PretrainedConfig

from dash_vl import Halting
from dash_vl.engine.prefill_flops import LayerShapes, attended_pairs
from dash_vl.report import HaltingReport
from tests.engine.test_engine_gemma3 import CONFIG
from tests.engine.test_engine_qwen3_5 import FULL_LAYER, LINEAR_LAYER, tiny_text_model
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


def weights(module: nn.Module) -> int:
    """Weights of the linear layers in ``module``."""
    return sum(child.weight.numel() for child in module.modules() if isinstance(child, nn.Linear))


@pytest.fixture(scope="module")
def qwen3_5():
    return tiny_text_model()


def test_projection_flops_of_qwen3_5_layers_are_twice_their_weights(qwen3_5):
    """Per token: a gated delta net's ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a`` and ``out_proj``
    and its depthwise convolution, and a gated attention layer's ``q_proj`` (queries and output gates),
    ``k_proj``, ``v_proj`` and ``o_proj``."""
    with Halting(qwen3_5, ratio=0.5) as halting:
        shapes = halting.engine.shapes
    kinds = qwen3_5.config.layer_types
    linear = qwen3_5.model.layers[kinds.index("linear_attention")].linear_attn
    attention = qwen3_5.model.layers[kinds.index("full_attention")].self_attn
    assert shapes.linear.projection_flops(1) == 2 * weights(linear)
    assert shapes.projection_flops(1) == 2 * weights(attention)
    assert shapes.linear.convolution_flops(1) == 2 * linear.conv1d.weight.numel()


@pytest.mark.parametrize("method", ["dash", "dash_block", "snapkv"])
def test_ratio_zero_is_exactly_the_unmodified_flops_of_qwen3_5(qwen3_5, method):
    """No decision is made at ratio 0: no pass for a score at the linear decision layer, no scoring work."""
    start = FULL_LAYER + 2 if method == "snapkv" else LINEAR_LAYER
    with Halting(qwen3_5, method=method, ratio=0.0, start_layer=start) as halting, torch.no_grad():
        qwen3_5(**text_prompts(2))
    assert halting.last_report.relative_flops == 1.0


def mixer_by_hand(layer: nn.Module, config: PretrainedConfig, tokens: torch.Tensor) -> float:
    """A Qwen3.5 decoder layer's token mixer over ``tokens`` (ascending positions), from its weights: per token
    2 FLOPs per projection weight; a gated delta net also 2 per convolution weight and ``7 dk dv`` per value
    head (its recurrence), an attention layer ``4 H d`` per query-key pair the causal mask lets through."""
    if hasattr(layer, "linear_attn"):
        recurrence = 7 * config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim
        per_token = 2 * weights(layer.linear_attn) + 2 * layer.linear_attn.conv1d.weight.numel() + recurrence
        return per_token * len(tokens)
    pairs = pairs_by_mask(tokens, tokens, None)
    return 2 * weights(layer.self_attn) * len(tokens) + 4 * config.num_attention_heads * config.head_dim * pairs


def relative_flops_by_hand(
    model: nn.Module, prompts: dict, report: HaltingReport, question_len: int, block: bool, layers: list[nn.Module]
) -> float:
    """Halted over unmodified FLOPs, layer by layer from the weights (``layers``: the decoder layers whose token
    mixers are counted, in order). Each layer runs its mixer and MLP on its stage's tokens and the question. At
    a decision layer the mixer also runs over the context tokens active before the decision: in an attention
    layer they attend over those in place of the kept ones; a linear layer runs that pass for the score, then
    the whole layer on the kept ones. ``block``: the decision layer's MLP runs over those tokens too."""
    config, end = model.config, prompts["input_ids"].shape[1] - question_len
    halted = full = 0.0
    for b, valid in enumerate(prompts["attention_mask"].bool()):
        question = torch.arange(end, end + question_len)
        sets = [torch.cat([valid[:end].nonzero().flatten(), question])]
        sets += [torch.tensor(stage[b]) for stage in report.kept_positions_per_stage]
        for index, layer in enumerate(layers):
            stage = sum(index >= start for start in report.decision_layers)
            mlp = 2 * weights(model.model.layers[index].mlp)
            full += mixer_by_hand(layer, config, sets[0]) + mlp * len(sets[0])
            halted += mixer_by_hand(layer, config, sets[stage]) + mlp * len(sets[stage])
            if stage and index == report.decision_layers[stage - 1]:
                before, after = (tokens[tokens < end] for tokens in sets[stage - 1 : stage + 1])
                halted += mixer_by_hand(layer, config, before) + (mlp * len(before) if block else 0.0)
                if not hasattr(layer, "linear_attn"):
                    halted -= mixer_by_hand(layer, config, after) + (mlp * len(after) if block else 0.0)
    return halted / full


@pytest.mark.parametrize("method,start,stages,question", [
    ("dash", LINEAR_LAYER, (), "halted"),
    ("dash", LINEAR_LAYER, (), "after_context"),
    ("dash_block", LINEAR_LAYER, (), "halted"),
    ("dash_multi", FULL_LAYER, (LINEAR_LAYER + 2,), "after_context"),
])
def test_relative_flops_of_qwen3_5_counts_linear_layers_by_their_recurrence(qwen3_5, method, start, stages, question):
    """DASH at a linear decision layer (its mixer over every token for the score, then the whole layer on the
    kept ones), at a full-attention one, the whole-block score, a question after the context: every layer
    counted by hand, which a count of the linear layers as attention layers misses."""
    prompts, question_len = text_prompts(2), 4 if question == "after_context" else 0
    knobs = dict(method=method, ratio=0.5, start_layer=start, stage_layers=stages, scope="all", question=question)
    with Halting(qwen3_5, **knobs) as halting, torch.no_grad():
        with halting.question_length(question_len) if question_len else contextlib.nullcontext():
            qwen3_5(**prompts)
    report, layers = halting.last_report, list(qwen3_5.model.layers)
    block = method == "dash_block"
    by_hand = relative_flops_by_hand(qwen3_5, prompts, report, question_len, block, layers)
    assert math.isclose(report.relative_flops, by_hand, rel_tol=1e-12)
    full_attention = layers[qwen3_5.config.layer_types.index("full_attention")]
    as_attention = relative_flops_by_hand(qwen3_5, prompts, report, question_len, block, [full_attention] * len(layers))
    assert not math.isclose(report.relative_flops, as_attention, rel_tol=1e-2)

"""Multi-stage halting (``stage_layers``) and the methods built on it: DASH's multi-selection schedule
(``dash_multi``), PyramidDrop and SnapKV as a pruner. Each equals a slow reference (kept tokens per
stage, prefill logits, 16 decode steps); PyramidDrop's and SnapKV's decisions are literal re-readings
of their official code; packed equals padded; the FLOPs and the KV cache are counted per stage."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen3Config

from dash_vl import Halting, HaltingConfig, hf_compat
from tests.conftest import FAMILY_NAMES, model_of, processor_of, vl_inputs
from tests.engine.stage_reference import StagedMaskingReference
from tests.engine.test_engine_gemma3 import CONFIG as GEMMA3
from tests.engine.test_engine_text_llm import SIZES
from tests.reference import (
    STEPS,
    assert_engine_matches_reference,
    capture_language_model_inputs,
    eligible_tokens,
    generate,
)
from tests.text_cases import all_but_last, text_prompts

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")

TEXT_CONFIGS = {"qwen2": (Qwen2Config, SIZES), "qwen3": (Qwen3Config, SIZES), "gemma3": (Gemma3TextConfig, GEMMA3)}
WINDOW = 8  # SnapKV's observation window on the tiny prompts


def text_model(name: str):
    torch.manual_seed(0)
    config_class, sizes = TEXT_CONFIGS[name]
    config = config_class(**sizes)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


def check_against(reference: StagedMaskingReference, model, inputs: dict, **knobs) -> None:
    """The engine under ``knobs`` keeps the reference's tokens at every stage and gives its logits, prefill and decode."""
    lm_inputs = capture_language_model_inputs(model, inputs)
    with torch.no_grad():
        expected_logits = model.lm_head(reference.prefill(lm_inputs))
    expected_tokens, expected_step_logits = reference.greedy(expected_logits[:, -1], STEPS)
    with Halting(model, **knobs) as halting:
        with torch.no_grad():
            logits = model(**inputs, position_ids=lm_inputs.position_ids).logits
        report = halting.last_report
        produced = generate(model, inputs)
    assert report.decision_layers == list(reference.decision_layers)
    for stage, active in enumerate(reference.stage_actives):
        assert report.kept_positions_per_stage[stage] == [row.nonzero().flatten().tolist() for row in active]
    assert_engine_matches_reference(
        report, reference, lm_inputs.valid, logits, expected_logits, produced, expected_tokens, expected_step_logits, STEPS
    )


def per_sample(chooser_one):
    """A chooser of :class:`StagedMaskingReference` that runs ``chooser_one(stage, layer, hidden, rope, eligible)``
    on each sample's active tokens alone, as one unpadded sequence (``hidden`` ``(1, n, D)``, rotary ids of the
    kept tokens, eligible ``(n,)`` bool), and maps the kept slots it returns back to prompt positions."""

    def chooser(reference, rope_ids):
        def choose(stage, layer, hidden, active, eligible):
            chosen = torch.zeros_like(active)
            for b in range(active.shape[0]):
                slots = active[b].nonzero().flatten()
                rope = rope_ids[..., b : b + 1, slots]
                kept = chooser_one(reference, stage, layer, hidden[b : b + 1, slots], rope, eligible[b, slots])
                chosen[b, slots[kept]] = True
            return chosen

        return choose

    return chooser


def family_rotary(reference, layer: int, hidden: torch.Tensor, rope: torch.Tensor, query, key):
    """The family's own ``apply_rotary_pos_emb`` with its rotary tables of layer ``layer``'s kind."""
    cos, sin = reference.rotary(hidden, rope)[layer]
    attention = reference.lm.layers[layer].self_attn
    return importlib.import_module(type(attention).__module__).apply_rotary_pos_emb(query, key, cos, sin)


def projected(reference, layer: int, hidden: torch.Tensor, rope: torch.Tensor):
    """Queries ``(1, H, n, d)`` and keys ``(1, KV, n, d)`` of layer ``layer`` over ``hidden`` ``(1, n, D)``, by hand."""
    decoder = reference.lm.layers[layer]
    attention, normed = decoder.self_attn, decoder.input_layernorm(hidden)
    query = attention.q_proj(normed).view(1, hidden.shape[1], -1, attention.head_dim)
    key = attention.k_proj(normed).view(1, hidden.shape[1], -1, attention.head_dim)
    if hasattr(attention, "q_norm"):
        query, key = attention.q_norm(query), attention.k_norm(key)
    return family_rotary(reference, layer, hidden, rope, query.transpose(1, 2), key.transpose(1, 2))


# --- literal re-readings of the official decisions -------------------------------------------------


def pyramiddrop_one(reference, stage, layer, hidden, rope, eligible):
    """modeling_llama_pdrop.py ``pdrop_rank_drop`` (lines 1306-1407): layer ``layer``'s q/k over the sequence,
    the last token's softmax(q k^T / sqrt(d) + causal mask) in float32, head mean, image columns, topk, sort."""
    ratio_list = [1.0] + [(1 - reference.ratio) ** (step + 1) for step in range(len(reference.decision_layers))]
    total = int(reference.eligible[0].sum())  # N: the first sample's image tokens (batch 1 in these tests)
    keep_length = int(total * ratio_list[stage + 1])
    query, key = projected(reference, layer, hidden, rope)
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    head_dim = query.shape[-1]
    weights = (query[:, :, -1:] @ key.transpose(2, 3)) / math.sqrt(head_dim)  # the last token sees every key
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32)
    image = eligible.nonzero().flatten()
    attention_avg_text = weights.mean(dim=1)[0, 0][image]
    top_rank_index = image[attention_avg_text.topk(keep_length).indices].sort().values
    kept = ~eligible
    kept[top_rank_index] = True
    return kept


def snapkv_one(reference, stage, layer, hidden, rope, eligible):
    """kvpress ``SnapKVPress.score`` (snapkv_press.py lines 42-103, window ``WINDOW``): the window's queries over
    every key, triu-masked, softmax float32, prefix columns, mean over the window, avg_pool1d(5, 2, 1), the group
    mean, then (the pruner) the mean over KV heads; the window padded with the largest score; the ``floor(ρ E)``
    lowest eligible tokens halted."""
    query, keys = projected(reference, layer, hidden, rope)
    batch, kv_heads, k_len, head_dim = keys.shape
    groups = query.shape[1] // kv_heads
    query = query[:, :, -WINDOW:]
    weights = query @ keys.repeat_interleave(groups, dim=1).transpose(2, 3) / math.sqrt(head_dim)
    mask = torch.triu(torch.full_like(weights, float("-inf")), diagonal=k_len - WINDOW + 1)
    weights = torch.softmax(weights + mask, dim=-1, dtype=torch.float32)[..., :-WINDOW]
    scores = F.avg_pool1d(weights.mean(dim=-2), kernel_size=5, padding=2, stride=1)
    scores = scores.view(batch, kv_heads, groups, k_len - WINDOW).mean(2).mean(1)[0]
    scores = F.pad(scores, (0, WINDOW), value=scores.max().item() + 1)
    candidates = eligible.nonzero().flatten().tolist()
    halted = sorted(candidates, key=lambda t: float(scores[t]))[: math.floor(reference.ratio * len(candidates) + 1e-9)]
    kept = torch.ones_like(eligible)
    kept[halted] = False
    return kept


def staged_reference(model, inputs, ratio, layers, eligible, chooser_one=None) -> StagedMaskingReference:
    reference = StagedMaskingReference(model, ratio, layers[0], eligible, decision_layers=tuple(layers))
    if chooser_one is not None:
        rope_ids = capture_language_model_inputs(model, inputs).rope_ids
        reference.chooser = per_sample(chooser_one)(reference, rope_ids)
    return reference


def vl_case(family: str, batch: int = 2, kind: str = "image"):
    return model_of(family, "sdpa"), vl_inputs(processor_of(family), batch, kind)


# --- DASH's multi-selection: the general engine against the masking reference ------------------------


@pytest.mark.parametrize("name,layers", [("qwen2", (1, 3)), ("qwen2", (2, 3)), ("gemma3", (1, 2, 4))])
def test_multi_selection_matches_masking_reference_on_text(name, layers):
    """Two or three decisions, one right after another included; Gemma-3's sliding-window layers among them."""
    model, prompts = text_model(name), text_prompts(2)
    reference = staged_reference(model, prompts, 0.5, layers, all_but_last(prompts))
    check_against(reference, model, prompts, method="dash_multi", ratio=0.5, start_layer=layers[0], stage_layers=layers[1:])


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_multi_selection_matches_masking_reference_on_vl(family):
    model, inputs = vl_case(family)
    reference = staged_reference(model, inputs, 0.5, (2, 4), eligible_tokens(model, inputs, "all", "halted"))
    check_against(reference, model, inputs, method="dash", ratio=0.5, start_layer=2, stage_layers=(4,))


# --- PyramidDrop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("family,kind", [(family, "image") for family in FAMILY_NAMES] + [("qwen2_vl", "video")])
def test_pyramiddrop_matches_the_official_rule_at_batch_one(family, kind):
    """Default schedule (0.25, 0.5, 0.75 of 6 layers: 1, 3, 4), λ = 0.5, one unpadded prompt."""
    model, inputs = vl_case(family, batch=1, kind=kind)
    eligible = eligible_tokens(model, inputs, "visual", "halted")
    reference = staged_reference(model, inputs, 0.5, (1, 3, 4), eligible, pyramiddrop_one)
    check_against(reference, model, inputs, method="pyramiddrop", ratio=0.5)


def test_pyramiddrop_keeps_floor_n_lambda_to_the_stage():
    model, inputs = vl_case("qwen2_vl", batch=1)
    with Halting(model, method="pyramiddrop", ratio=0.4, stage_layers=(3,)) as halting, torch.no_grad():
        model(**inputs)
    report = halting.last_report
    visual = report.eligible_tokens[0]
    text = report.prompt_tokens[0] - visual
    assert [len(kept[0]) - text for kept in report.kept_positions_per_stage] == [
        math.floor(visual * 0.6), math.floor(visual * 0.36 + 1e-9)
    ]


def test_pyramiddrop_batch_matches_the_prompt_alone():
    """In a left-padded two-prompt batch the first prompt keeps, stage by stage, what it keeps alone, and decodes the same."""
    model, batch = vl_case("qwen2_5_vl")
    _, alone = vl_case("qwen2_5_vl", batch=1)
    padding = int((~batch["attention_mask"][0].bool()).sum())
    results = []
    for inputs in (batch, alone):
        with Halting(model, method="pyramiddrop", ratio=0.5) as halting, torch.no_grad():
            model(**inputs)
            kept = [stage[0] for stage in halting.last_report.kept_positions_per_stage]
            results.append((kept, generate(model, inputs).sequences[0, -STEPS:]))
    (kept, sequence), (kept_alone, sequence_alone) = results
    assert kept == [[position + padding for position in stage] for stage in kept_alone]
    assert torch.equal(sequence, sequence_alone)


def test_pyramiddrop_needs_visual_tokens():
    with pytest.raises(ValueError, match="scope='visual' needs a model with visual tokens"):
        Halting(text_model("qwen2"), method="pyramiddrop", ratio=0.5)


def test_pyramiddrop_stage_that_keeps_nothing_is_a_clear_error():
    model, inputs = vl_case("qwen2_vl", batch=1)  # 16 visual tokens: 16 x 0.1^2 < 1
    with Halting(model, method="pyramiddrop", ratio=0.9), pytest.raises(ValueError, match="pyramiddrop keeps int"):
        model(**inputs)


# --- SnapKV (pruned) -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,layer", [("qwen2", 2), ("qwen3", 2), ("gemma3", 2)])
def test_snapkv_matches_kvpress_rule_on_text(name, layer):
    model, prompts = text_model(name), text_prompts(2)
    reference = staged_reference(model, prompts, 0.5, (layer,), all_but_last(prompts), snapkv_one)
    check_against(reference, model, prompts, method="snapkv", ratio=0.5, start_layer=layer, observation_window=WINDOW)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_snapkv_matches_kvpress_rule_on_vl(family):
    model, inputs = vl_case(family)
    reference = staged_reference(model, inputs, 0.5, (2,), eligible_tokens(model, inputs, "all", "halted"), snapkv_one)
    check_against(reference, model, inputs, method="snapkv", ratio=0.5, start_layer=2, observation_window=WINDOW)


def test_snapkv_at_two_stages_matches_the_rule_over_the_active_tokens():
    model, prompts = text_model("qwen2"), text_prompts(2)
    reference = staged_reference(model, prompts, 0.5, (1, 3), all_but_last(prompts), snapkv_one)
    check_against(
        reference, model, prompts, method="snapkv", ratio=0.5, start_layer=1, stage_layers=(3,), observation_window=WINDOW
    )


def test_snapkv_window_longer_than_the_prompt_is_a_clear_error():
    model, prompts = text_model("qwen2"), text_prompts(1)  # 40 tokens
    with Halting(model, method="snapkv", ratio=0.5), pytest.raises(ValueError, match="observation window"):
        model(**prompts)


# --- the engine's stage bookkeeping ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method,knobs", [
    ("dash_multi", dict(start_layer=2, stage_layers=(4,))),
    ("pyramiddrop", {}),
    ("snapkv", dict(start_layer=1, stage_layers=(3,), observation_window=WINDOW)),
])
def test_packed_multi_stage_prefill_matches_padded(method, knobs):
    model, inputs = vl_case("qwen2_vl")
    results = []
    for packing in ("off", "always"):
        with Halting(model, method=method, ratio=0.5, packing=packing, **knobs) as halting, torch.no_grad():
            logits = model(**inputs).logits
            results.append((logits, halting.last_report.kept_positions_per_stage, generate(model, inputs).sequences))
    (logits, kept, sequences), (packed_logits, packed_kept, packed_sequences) = results
    valid = inputs["attention_mask"].bool()
    assert packed_kept == kept
    torch.testing.assert_close(packed_logits[valid], logits[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(packed_sequences, sequences)


@pytest.mark.parametrize("method", ["dash_multi", "pyramiddrop", "snapkv"])
def test_ratio_zero_matches_unmodified_model(method):
    model, inputs = vl_case("llava_onevision")
    with torch.no_grad():
        expected = model(**inputs).logits
    with Halting(model, method=method, ratio=0.0, start_layer=1, stage_layers=(3,)), torch.no_grad():
        logits = model(**inputs).logits
    valid = inputs["attention_mask"].bool()
    assert torch.equal(logits[valid], expected[valid])


def test_cache_lengths_and_flops_are_counted_per_stage():
    """Each layer caches its stage's widest sample; the report's per-layer counts, total and per-stage FLOPs
    follow the kept tokens of each stage (layer by layer, projections + attention pairs + MLP)."""
    model, prompts = text_model("qwen2"), text_prompts(2)
    with Halting(model, method="dash_multi", ratio=0.5, start_layer=1, stage_layers=(3,)) as halting, torch.no_grad():
        output = model(**prompts, use_cache=True)
    report, shapes = halting.last_report, halting.engine.shapes
    cache = hf_compat.output_cache(output)
    assert [hf_compat.cached_length(cache, index) for index in range(SIZES["num_hidden_layers"])] == [
        max(counts) for counts in report.kept_tokens_per_layer
    ]
    valid = prompts["attention_mask"].bool()
    halted, full = [0.0] * 5, [0.0] * 5
    for b in range(2):
        context = valid[b].nonzero().flatten()
        sets = [context] + [torch.tensor(stage[b]) for stage in report.kept_positions_per_stage]
        stage_of = [0, 1, 1, 2, 2]
        for layer in range(5):
            n = len(context)
            full[layer] += shapes.layer_flops(n, n * (n + 1) // 2)
            tokens = len(sets[stage_of[layer]])
            if layer in (1, 3):  # DASH: attention over the tokens before the decision, MLP on the kept ones
                before = len(sets[stage_of[layer] - 1])
                halted[layer] += shapes.layer_flops(before, before * (before + 1) // 2, mlp_tokens=tokens)
            else:
                halted[layer] += shapes.layer_flops(tokens, tokens * (tokens + 1) // 2)
        assert report.kept_tokens_per_layer[4][b] == len(sets[2])
    assert report.relative_flops == pytest.approx(sum(halted) / sum(full))
    assert report.relative_flops_per_stage == pytest.approx([sum(halted[1:3]) / sum(full[1:3]), sum(halted[3:]) / sum(full[3:])])


@pytest.mark.parametrize("knobs,message", [
    (dict(method="fastv", stage_layers=(4,)), "stage_layers must be \\(\\) for method 'fastv'"),
    (dict(method="dash", stage_layers=(1.5,)), "stage_layers fractions of the depth must be in \\(0, 1\\)"),
    (dict(method="dash", stage_layers=(0,)), "stage_layers layer indices must be >= 1"),
    (dict(method="snapkv", observation_window=0), "observation_window must be an int >= 1"),
])
def test_bad_stage_knobs_are_clear_errors(knobs, message):
    with pytest.raises(ValueError, match=message):
        HaltingConfig(ratio=0.5, **knobs)


def test_stage_layers_must_ascend_after_the_start_layer():
    with pytest.raises(ValueError, match="stage_layers must ascend after start_layer"):
        Halting(text_model("qwen2"), method="dash", ratio=0.5, start_layer=3, stage_layers=(2,))


def test_lmms_eval_and_cli_read_the_stage_knobs():
    from dash_vl.cli import build_parser
    from dash_vl.knobs import config_from_arguments

    def from_flags(*flags: str) -> HaltingConfig:
        return config_from_arguments(build_parser().parse_args(["ask", "-q", "q", "--ratio", "0.5", *flags]))

    assert from_flags("--method", "pyramiddrop", "--stage-layers", "0.5/0.75").stage_layers == (0.5, 0.75)
    assert from_flags("--stage-layers", "8/16").stage_layers == (8, 16)
    assert from_flags("--method", "pyramiddrop", "--stage-layers", "").stage_layers == ()
    lmms_eval_models = pytest.importorskip("dash_vl.integrations.lmms_eval.models")
    config = lmms_eval_models.halting_config(
        {"method": "pyramiddrop", "ratio": "0.5", "start_layer": "8", "stage_layers": "16/24", "observation_window": "32"}
    )
    assert (config.start_layer, config.stage_layers, config.observation_window) == (8, (16, 24), 32)
    assert lmms_eval_models.halting_config({"method": "dash", "ratio": "0.5", "stage_layers": 20}).stage_layers == (20,)

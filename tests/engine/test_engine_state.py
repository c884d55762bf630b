"""KV cache layout, rotary ids, the context-then-question protocol, reports and per-prompt state."""

from __future__ import annotations

import math

import pytest
import torch

from dash_vl import Halting
from dash_vl.hf_compat import output_cache
from dash_vl.methods import halted_count
from tests.conftest import vl_inputs
from tests.reference import STEPS, MaskingReference, capture_language_model_inputs, eligible_tokens, generate


def test_kv_cache_holds_all_tokens_before_the_decision_layer_and_kept_ones_after(sdpa_model, inputs):
    with Halting(sdpa_model, ratio=0.75, start_layer=2) as halting, torch.no_grad():
        cache = output_cache(sdpa_model(**inputs, use_cache=True))
    kept = max(halting.last_report.kept_tokens_per_layer[-1])
    lengths = [layer.keys.shape[2] for layer in cache.layers]
    assert lengths == [inputs["input_ids"].shape[1]] * 2 + [kept] * 4
    assert cache.get_seq_length() == inputs["input_ids"].shape[1]


def test_kept_tokens_keep_their_mrope_ids(sdpa_model, inputs):
    expected_ids = capture_language_model_inputs(sdpa_model, inputs).rope_ids
    seen = []
    hook = sdpa_model.model.language_model.rotary_emb.register_forward_hook(lambda m, args, out: seen.append(args[1]))
    with Halting(sdpa_model, ratio=0.75, start_layer=2) as halting, torch.no_grad():
        sdpa_model(**inputs)
    hook.remove()
    full_ids, compact_ids = seen
    assert torch.equal(full_ids, expected_ids)
    for b, kept in enumerate(halting.last_report.kept_positions):
        assert torch.equal(compact_ids[:, b, -len(kept) :], expected_ids[:, b, kept])


def test_report_counts_and_flops(sdpa_model, processor):
    inputs = vl_inputs(processor, 1)
    with Halting(sdpa_model, ratio=0.5, start_layer=2) as halting, torch.no_grad():
        sdpa_model(**inputs)
    report = halting.last_report
    tokens = inputs["input_ids"].shape[1]
    kept = tokens - halted_count(0.5, tokens - 1)
    assert report.prompt_tokens == [tokens] and report.eligible_tokens == [tokens - 1]
    assert report.kept_tokens_per_layer == [[tokens]] * 2 + [[kept]] * 4
    shapes = halting.engine.shapes
    per_token = shapes.projection_flops(1) + shapes.mlp_flops(1)
    attention = lambda n: 4 * shapes.heads * shapes.head_dim * n * (n + 1) / 2  # noqa: E731
    full = 6 * (tokens * per_token + attention(tokens))
    halted = (
        2 * (tokens * per_token + attention(tokens))
        + shapes.projection_flops(tokens) + attention(tokens) + shapes.mlp_flops(kept)
        + 3 * (kept * per_token + attention(kept))
    )
    assert math.isclose(report.relative_flops, halted / full, rel_tol=1e-12)


def test_second_prompt_does_not_inherit_the_first_prompts_halting(sdpa_model, processor):
    first, second = vl_inputs(processor, 2), vl_inputs(processor, 1)
    with Halting(sdpa_model, ratio=0.9, start_layer=2):
        fresh = generate(sdpa_model, second)
    with Halting(sdpa_model, ratio=0.9, start_layer=2) as halting:
        generate(sdpa_model, first)
        after_other = generate(sdpa_model, second)
    assert len(halting.reports) == 2
    assert torch.equal(after_other.sequences, fresh.sequences)
    for step, fresh_step in zip(after_other.logits, fresh.logits):
        assert torch.equal(step, fresh_step)


@pytest.mark.parametrize("question_tokens", [None, 5])
def test_context_then_question_matches_masking_reference(sdpa_model, processor, question_tokens):
    inputs = vl_inputs(processor, 1)
    ids = inputs["input_ids"]
    visual = (ids == sdpa_model.config.image_token_id)[0]
    question_len = question_tokens or ids.shape[1] - 1 - int(visual.nonzero().max())
    context_len = ids.shape[1] - question_len
    lm_inputs = capture_language_model_inputs(sdpa_model, inputs)
    context = lm_inputs.prefix(context_len)
    eligible = inputs["attention_mask"].bool()[:, :context_len]
    reference = MaskingReference(sdpa_model, 0.75, 2, eligible)
    with torch.no_grad():
        expected = torch.cat([reference.prefill(context), reference.extend(lm_inputs.embeds[:, context_len:])], dim=1)
        expected_logits = sdpa_model.lm_head(expected)
    expected_tokens, _ = reference.greedy(expected_logits[:, -1], STEPS)

    with Halting(sdpa_model, ratio=0.75, start_layer=2, question="after_context") as halting:
        if question_tokens:
            with halting.question_length(question_tokens), torch.no_grad():
                logits = sdpa_model(**inputs).logits
                produced = generate(sdpa_model, inputs)
        else:
            with torch.no_grad():
                logits = sdpa_model(**inputs).logits
            produced = generate(sdpa_model, inputs)
    report = halting.last_report
    assert report.kept_positions[0][-question_len:] == list(range(context_len, ids.shape[1]))
    assert report.kept_positions[0][: -question_len] == reference.active[0].nonzero().flatten().tolist()
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(produced.sequences[:, -STEPS:], expected_tokens)


def test_protected_question_is_never_halted(sdpa_model, inputs):
    with Halting(sdpa_model, ratio=0.9, start_layer=2, question="protected") as halting, torch.no_grad():
        sdpa_model(**inputs)
    protected = ~eligible_tokens(sdpa_model, inputs, "all", "protected") & inputs["attention_mask"].bool()
    for b, kept in enumerate(halting.last_report.kept_positions):
        assert set(protected[b].nonzero().flatten().tolist()) <= set(kept)

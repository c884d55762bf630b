"""Packed prefill (``HaltingConfig.packing``) on ragged batches: the same kept tokens, prefill logits
on valid positions and 16 ``generate`` steps as the padded engine, for every family and method,
while the layers really run packed (FlexAttention's uncompiled CPU path) over the valid tokens only."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from dash_vl import Halting, HaltingConfig, hf_compat
from dash_vl.engine.layouts import Packing, run_starts
from dash_vl.engine.packed_attention import PACKED_ATTENTION, document_causal_mask, packed_attention
from tests.conftest import FAMILY_NAMES, model_of, processor_of, vl_inputs
from tests.engine.test_engine_text_llm import SIZES
from tests.reference import capture_language_model_inputs, generate

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")

TEXT_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}
TEXT_FAMILIES = ("llama", "qwen2")
TEXT_LENGTHS = (40, 29, 15)
VL_METHODS = [("dash", 0.0), ("dash", 0.5), ("fastv", 0.5), ("dart", 0.5), ("random", 0.5), ("visionzip", 0.5)]


@pytest.fixture
def packed_calls():
    """Query lengths of every packed attention call, recorded while the test runs."""
    lengths: list[int] = []

    def recording(module, query, *args, **kwargs):
        lengths.append(query.shape[2])
        return packed_attention(module, query, *args, **kwargs)

    hf_compat.register_attention(PACKED_ATTENTION, recording)
    yield lengths
    hf_compat.register_attention(PACKED_ATTENTION, packed_attention)


def text_model(name: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = TEXT_CONFIGS[name](**dict(SIZES, **overrides))
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


def ragged_prompts(lengths: tuple[int, ...]) -> dict:
    """Left-padded random prompts of ``lengths`` tokens (ids from 3; 0 is the pad id)."""
    width = max(lengths)
    input_ids = torch.randint(3, SIZES["vocab_size"], (len(lengths), width), generator=torch.Generator().manual_seed(1))
    attention_mask = (torch.arange(width) >= width - torch.tensor(lengths)[:, None]).long()
    return dict(input_ids=input_ids * attention_mask, attention_mask=attention_mask)


def run(model, inputs: dict, packing: str, calls: list[int], **knobs) -> tuple:
    """Prefill logits, its report, the packed attention calls it made, and ``generate``'s output."""
    calls.clear()
    with Halting(model, packing=packing, **knobs) as halting:
        with torch.no_grad():
            logits = model(**inputs).logits
        prefill_calls = list(calls)
        report = halting.last_report
        produced = generate(model, inputs)
    return logits, report, prefill_calls, produced


def assert_packed_matches_padded(
    model, inputs: dict, calls: list[int], packing: str = "ragged", expect_flex_calls: bool = True, **knobs
) -> None:
    """Equal to the padded engine; the prefill's FlexAttention calls, one per attention layer (a linear-attention
    layer runs padded, row by row), saw the valid tokens, then the kept ones (none at all where
    ``expect_flex_calls`` is False: a FlashAttention model packs through its varlen kernel)."""
    logits, report, padded_calls, produced = run(model, inputs, "off", calls, **knobs)
    packed_logits, packed_report, packed_calls, packed_produced = run(model, inputs, packing, calls, **knobs)
    valid = inputs["attention_mask"].bool()
    assert packed_report.kept_positions == report.kept_positions
    torch.testing.assert_close(packed_logits[valid], logits[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(packed_produced.sequences, produced.sequences)
    for packed_step, step in zip(packed_produced.logits, produced.logits, strict=True):
        torch.testing.assert_close(packed_step, step, rtol=1e-5, atol=1e-5)

    start, layers = report.start_layer, len(report.kept_tokens_per_layer)
    kept = sum(len(positions) for positions in report.kept_positions)
    assert padded_calls == []
    if not expect_flex_calls:
        assert packed_calls == []
        return
    kinds = getattr(model.config.get_text_config(), "layer_types", None) or ["full_attention"] * layers
    attention_layers = [index for index, kind in enumerate(kinds) if kind != "linear_attention"]
    assert len(packed_calls) == len(attention_layers)
    expected = {index: int(valid.sum()) if index < start else kept for index in attention_layers if index != start}
    assert {index: packed_calls[attention_layers.index(index)] for index in expected} == expected


@pytest.mark.parametrize("method,ratio", [("dash", 0.0), ("dash", 0.5), ("random", 0.5)])
@pytest.mark.parametrize("name", TEXT_FAMILIES)
def test_packed_text_prefill_matches_padded_engine(name, method, ratio, packed_calls):
    model, prompts = text_model(name), ragged_prompts(TEXT_LENGTHS)
    prompts["position_ids"] = capture_language_model_inputs(model, prompts).position_ids
    assert_packed_matches_padded(model, prompts, packed_calls, method=method, ratio=ratio, start_layer=2)


def test_packed_prefill_with_a_head_count_that_is_not_a_power_of_two(packed_calls):
    """6 query heads over 2 key/value heads: the key/value heads are repeated before the kernel."""
    model, prompts = text_model("qwen2", hidden_size=96, num_attention_heads=6), ragged_prompts(TEXT_LENGTHS)
    assert_packed_matches_padded(model, prompts, packed_calls, ratio=0.5, start_layer=2)


@pytest.mark.parametrize("method,ratio", VL_METHODS)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_packed_vl_prefill_matches_padded_engine(family, method, ratio, packed_calls):
    """Two prompts with images of different sizes (M-RoPE ids on the Qwen families)."""
    inputs = vl_inputs(processor_of(family), 2, "image")
    knobs = {} if method == "visionzip" else dict(start_layer=2)
    assert_packed_matches_padded(model_of(family, "sdpa"), inputs, packed_calls, method=method, ratio=ratio, **knobs)


def test_packed_context_then_appended_question_matches_padded_engine(packed_calls):
    """``question="after_context"``: the context prefilled packed, the last 5 tokens appended padded."""
    model, prompts = text_model("qwen2"), ragged_prompts(TEXT_LENGTHS)
    results = {}
    for packing in ("off", "ragged"):
        packed_calls.clear()
        with Halting(model, ratio=0.5, start_layer=2, question="after_context", packing=packing) as halting:
            with halting.question_length(5), torch.no_grad():
                logits = model(**prompts).logits
                produced = generate(model, prompts)
        results[packing] = logits, halting.reports[0].kept_positions, produced.sequences, list(packed_calls)
    (logits, kept, sequences, calls), (packed_logits, packed_kept, packed_sequences, packed_calls) = results.values()
    valid = prompts["attention_mask"].bool()
    assert calls == [] and packed_calls
    assert packed_kept == kept
    torch.testing.assert_close(packed_logits[valid], logits[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(packed_sequences, sequences)


def test_packed_qwen2_vl_video_matches_padded_engine(packed_calls):
    inputs = vl_inputs(processor_of("qwen2_vl"), 2, "video")
    assert_packed_matches_padded(
        model_of("qwen2_vl", "eager"), inputs, packed_calls, packing="always", method="dash", ratio=0.5, start_layer=2
    )


def test_always_packs_a_single_prompt(packed_calls):
    prompts = ragged_prompts((33,))
    assert_packed_matches_padded(text_model("qwen2"), prompts, packed_calls, packing="always", ratio=0.5, start_layer=2)


def test_ragged_keeps_the_padded_path_for_equal_lengths(packed_calls):
    model, prompts = text_model("qwen2"), ragged_prompts((24, 24))
    _, _, calls, _ = run(model, prompts, "ragged", packed_calls, ratio=0.5, start_layer=2)
    assert calls == []


def test_packed_prefill_refuses_a_sliding_window_shorter_than_the_prompt():
    model, prompts = text_model("mistral", sliding_window=8), ragged_prompts(TEXT_LENGTHS)
    with Halting(model, ratio=0.5, start_layer=2, packing="ragged"), torch.no_grad():
        with pytest.raises(ValueError, match="sliding window"):
            model(**prompts)


def test_packing_mode_is_validated():
    with pytest.raises(ValueError, match="packing must be one of"):
        HaltingConfig(packing="on")


@pytest.mark.parametrize("lengths", [(300, 5, 128, 200, 1), (128, 128), (1,), (129, 256, 7)])
def test_document_causal_block_mask_equals_torch_dense_construction(lengths):
    """Own block lists (skipped / full / masked blocks) equal ``create_block_mask`` from the same rule."""
    document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).int()
    tokens = document.shape[0]
    mask = document_causal_mask(document, len(lengths))
    expected = create_block_mask(
        lambda b, h, q, k: (document[q] == document[k]) & (k <= q), None, None, tokens, tokens, device="cpu"
    )
    for counts, indices, expected_counts, expected_indices in [
        (mask.kv_num_blocks, mask.kv_indices, expected.kv_num_blocks, expected.kv_indices),
        (mask.full_kv_num_blocks, mask.full_kv_indices, expected.full_kv_num_blocks, expected.full_kv_indices),
    ]:
        assert torch.equal(counts, expected_counts)
        for row, count in enumerate(counts[0, 0].tolist()):
            assert sorted(indices[0, 0, row, :count].tolist()) == sorted(expected_indices[0, 0, row, :count].tolist())


def test_packing_lays_valid_slots_end_to_end_and_back():
    valid = torch.tensor([[False, True, True, False], [True, True, True, True], [True, False, True, False]])
    states = torch.arange(12.0).view(3, 4, 1)
    packing = Packing(valid, valid.sum(dim=1).tolist())
    assert run_starts(valid).tolist() == [1, 0, -1]
    assert packing.pack(states).flatten().tolist() == [1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0]
    assert torch.equal(packing.unpack(packing.pack(states)), states * valid[..., None])
    assert packing.pack_ids(torch.arange(4).expand(3, 3, 4)).shape == (3, 1, 8)


def test_packing_of_one_run_per_sample_copies_runs_as_the_index_does():
    valid = torch.tensor([[False, True, True, False], [True, True, True, True], [False, False, False, True]])
    states, ids = torch.randn(3, 4, 2, 5), torch.arange(36).view(3, 3, 4)
    starts, counts = run_starts(valid).tolist(), valid.sum(dim=1).tolist()
    assert starts == [1, 0, 3]
    by_runs, by_index = Packing(valid, counts, starts), Packing(valid, counts)
    assert torch.equal(by_runs.pack(states), by_index.pack(states))
    assert torch.equal(by_runs.pack_ids(ids), by_index.pack_ids(ids))
    packed_heads = torch.randn(1, 2, 7, 5)
    assert torch.equal(by_runs.unpack_heads(packed_heads), by_index.unpack_heads(packed_heads))
    assert torch.equal(by_runs.unpack(by_runs.pack(states)), states * valid[..., None, None])


def test_lmms_eval_model_args_pass_packing_and_the_vision_knobs_on():
    lmms_eval_models = pytest.importorskip("dash_vl.integrations.lmms_eval.models")
    assert lmms_eval_models.halting_config(dict(method="dash", ratio="0", packing="ragged")).packing == "ragged"
    with pytest.raises(ValueError, match=r"no packed prefill.*\(got packing=ragged\)"):
        lmms_eval_models.halting_config(dict(method="none", ratio="0", packing="ragged"))
    config = lmms_eval_models.halting_config(dict(method="dash", vision_ratio="0.5", vision_start_layer="12"))
    assert (config.vision_ratio, config.vision_start_layer) == (0.5, 12)
    assert lmms_eval_models.halting_config(dict(method="dash", ratio="0")).vision_ratio is None
    with pytest.raises(ValueError, match=r"vision encoder included.*\(got vision_ratio=0.5\)"):
        lmms_eval_models.halting_config(dict(method="none", vision_ratio="0.5"))
    assert lmms_eval_models.halting_config(dict(method="none", ratio="0")) is None

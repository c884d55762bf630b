"""The same engine on text-only LLMs (Llama, Mistral, Qwen2, Qwen3 layers): every token is text."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from dash_vl import Halting
from tests.reference import STEPS, MaskingReference, assert_engine_matches_reference, capture_language_model_inputs, generate

SIZES = dict(
    vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
)
CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def text_model(request):
    torch.manual_seed(0)
    config = CONFIGS[request.param](**SIZES)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(params=[1, 2], ids=["batch1", "batch2-left-padded"])
def prompts(request):
    generator = torch.Generator().manual_seed(request.param)
    input_ids = torch.randint(3, 97, (request.param, 40), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, :11] = 0
    input_ids[attention_mask == 0] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def test_ratio_zero_matches_unmodified_text_model(text_model, prompts):
    positions = capture_language_model_inputs(text_model, prompts).position_ids
    with torch.no_grad():
        expected_logits = text_model(**prompts, position_ids=positions).logits
    expected = generate(text_model, prompts)
    with Halting(text_model, ratio=0.0):
        with torch.no_grad():
            logits = text_model(**prompts, position_ids=positions).logits
        produced = generate(text_model, prompts)
    valid = prompts["attention_mask"].bool()
    assert torch.equal(logits[valid], expected_logits[valid])
    assert torch.equal(produced.sequences, expected.sequences)


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_text_halting_matches_masking_reference(text_model, prompts, ratio):
    lm_inputs = capture_language_model_inputs(text_model, prompts)
    eligible = lm_inputs.valid.clone()
    eligible[:, -1] = False
    reference = MaskingReference(text_model, ratio, 2, eligible)
    with torch.no_grad():
        expected_logits = text_model.lm_head(reference.prefill(lm_inputs))
    expected_tokens, expected_step_logits = reference.greedy(expected_logits[:, -1], STEPS)
    with Halting(text_model, ratio=ratio, start_layer=2) as halting:
        with torch.no_grad():
            logits = text_model(**prompts, position_ids=lm_inputs.position_ids).logits
        report = halting.last_report
        produced = generate(text_model, prompts)
    assert_engine_matches_reference(
        report, reference, lm_inputs.valid, logits, expected_logits, produced, expected_tokens,
        expected_step_logits, STEPS,
    )


def test_text_model_refuses_visual_scope(text_model):
    with pytest.raises(ValueError, match="scope='visual' needs a model with visual tokens"):
        Halting(text_model, ratio=0.5, scope="visual")


def test_text_question_protected_by_explicit_length(text_model, prompts):
    with Halting(text_model, ratio=0.9, start_layer=2, question="protected") as halting:
        with halting.question_length(7), torch.no_grad():
            text_model(**prompts)
    seq_len = prompts["input_ids"].shape[1]
    for kept in halting.last_report.kept_positions:
        assert kept[-7:] == list(range(seq_len - 7, seq_len))

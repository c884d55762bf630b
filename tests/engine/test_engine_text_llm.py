"""The same engine on text-only LLMs (Llama, Mistral, Qwen2, Qwen3 layers): every token is text."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from dash_vl import Halting
from tests.reference import MaskingReference
from tests.text_cases import all_but_last, assert_matches_reference, assert_ratio_zero_matches_unmodified, text_prompts

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
    return text_prompts(request.param)


def test_ratio_zero_matches_unmodified_text_model(text_model, prompts):
    assert_ratio_zero_matches_unmodified(text_model, prompts)


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_text_halting_matches_masking_reference(text_model, prompts, ratio):
    reference = MaskingReference(text_model, ratio, 2, all_but_last(prompts))
    assert_matches_reference(text_model, prompts, reference, ratio=ratio, start_layer=2)


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

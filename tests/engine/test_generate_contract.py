"""What one ``generate`` call must do under halting, whatever the installed transformers calls the cache.

transformers 5.24 renamed the cache keyword (``past_key_values`` to ``cache``); an engine that
missed the new name took every decode step for a new prefill. These tests state the contract
directly: one prefill report per call, and after it every layer's cache holds what the spec says.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from dash_vl import Halting
from dash_vl.hf_compat import output_cache
from tests.conftest import model_of, processor_of, vl_inputs

NEW_TOKENS = 5
START_LAYER = 2


def tiny_qwen2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


def text_prompts() -> dict:
    input_ids = torch.randint(3, 97, (2, 40), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :9] = 0
    input_ids[attention_mask == 0] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask)


@pytest.fixture(params=["qwen2_vl", "qwen2"])
def model_and_prompts(request):
    if request.param == "qwen2":
        return tiny_qwen2(), text_prompts()
    return model_of("qwen2_vl", "sdpa"), vl_inputs(processor_of("qwen2_vl"), 2)


def greedy(model, prompts: dict):
    with torch.no_grad():
        return model.generate(
            **prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True
        )


def test_one_generate_call_makes_one_prefill_and_the_spec_cache_lengths(model_and_prompts):
    """Layers ``< l_s`` cache all ``T`` prompt slots and layers ``>= l_s`` the compact width ``K`` (the
    longest kept set of the left-padded batch); both grow by one per decode step. The last generated
    token is never fed back, so ``N`` new tokens add ``N - 1`` slots."""
    model, prompts = model_and_prompts
    with Halting(model, ratio=0.5, start_layer=START_LAYER) as halting:
        output = greedy(model, prompts)
    assert len(halting.reports) == 1
    report = halting.reports[0]
    prompt_slots = prompts["input_ids"].shape[1]
    compact_slots = max(report.kept_tokens_per_layer[-1])
    assert compact_slots < prompt_slots
    layers = len(report.kept_tokens_per_layer)
    expected = [prompt_slots + NEW_TOKENS - 1] * START_LAYER + [compact_slots + NEW_TOKENS - 1] * (layers - START_LAYER)
    assert [layer.keys.shape[2] for layer in output_cache(output).layers] == expected
    assert output.sequences.shape[1] == prompt_slots + NEW_TOKENS


def test_halting_adds_no_warning_to_generate(model_and_prompts):
    """dash_vl's own calls into transformers use the installed release's names: a halted
    ``generate`` warns of nothing that the unmodified one does not (no deprecated cache keyword)."""
    model, prompts = model_and_prompts

    def messages(run) -> set[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
        return {f"{warning.category.__name__}: {warning.message}" for warning in caught}

    unmodified = messages(lambda: greedy(model, prompts))
    with Halting(model, ratio=0.5, start_layer=START_LAYER):
        halted = messages(lambda: greedy(model, prompts))
    assert halted <= unmodified

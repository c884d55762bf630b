"""Bad input fails loudly with the knob's name; nothing falls back to 'no halting'."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dash_vl import Halting, HaltingConfig
from dash_vl.hf_compat import prompt_validity
from dash_vl.testing import random_model, tiny_config


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval_is_rejected(ratio):
    with pytest.raises(ValueError, match="ratio"):
        HaltingConfig(ratio=ratio)


def test_ratio_of_wrong_type_is_rejected():
    with pytest.raises(TypeError, match="ratio"):
        HaltingConfig(ratio="0.5")


@pytest.mark.parametrize("start_layer", [0, 6, 7])
def test_start_layer_outside_model_depth_is_rejected(sdpa_model, start_layer):
    with pytest.raises(ValueError, match="start_layer"):
        Halting(sdpa_model, ratio=0.5, start_layer=start_layer)


@pytest.mark.parametrize("start_layer", [0.0, 1.0, 1.5])
def test_start_layer_fraction_outside_open_interval_is_rejected(start_layer):
    with pytest.raises(ValueError, match="start_layer"):
        HaltingConfig(start_layer=start_layer)


@pytest.mark.parametrize("knob,value", [("scope", "text"), ("question", "ignored"), ("method", "nope")])
def test_unknown_choice_is_rejected(knob, value):
    with pytest.raises(ValueError, match=knob):
        HaltingConfig(**{knob: value})


def test_model_family_without_adapter_is_rejected():
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(TypeError, match="no adapter for model type 'gpt2'"):
        Halting(model, ratio=0.5)


def test_module_without_config_is_rejected():
    with pytest.raises(TypeError, match="HF config"):
        Halting(torch.nn.Linear(2, 2), ratio=0.5)


def test_text_only_prompt_has_no_eligible_visual_tokens(sdpa_model, processor):
    inputs = processor(text=["<|im_start|>user\nHello there<|im_end|>\n"], return_tensors="pt")
    with Halting(sdpa_model, ratio=0.5, scope="visual"), pytest.raises(ValueError, match="no token eligible"):
        sdpa_model(**inputs)


def test_protected_question_needs_visual_tokens_or_a_length(sdpa_model, processor):
    inputs = processor(text=["<|im_start|>user\nHello there<|im_end|>\n"], return_tensors="pt")
    with Halting(sdpa_model, ratio=0.5, question="protected"), pytest.raises(ValueError, match="question_length"):
        sdpa_model(**inputs)


def test_unsupported_attention_implementation_is_rejected(processor):
    model = random_model(tiny_config("qwen2_vl", processor.tokenizer))
    model.model.language_model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation"):
        Halting(model, ratio=0.5)


def test_attention_outputs_are_rejected_while_halting(sdpa_model, processor):
    inputs = processor(text=["<|im_start|>user\nHello<|im_end|>\n"], return_tensors="pt")
    with Halting(sdpa_model, ratio=0.5), pytest.raises(ValueError, match="output_hidden_states"):
        sdpa_model(**inputs, output_hidden_states=True)


def test_question_covering_the_whole_prompt_is_rejected(sdpa_model, processor):
    inputs = processor(text=["<|im_start|>user\nHi<|im_end|>\n"], return_tensors="pt")
    halting = Halting(sdpa_model, ratio=0.5, question="after_context")
    with halting, halting.question_length(inputs["input_ids"].shape[1]), pytest.raises(ValueError, match="whole prompt"):
        sdpa_model(**inputs)


def test_config_and_keyword_knobs_together_are_rejected(sdpa_model):
    with pytest.raises(TypeError, match="not both"):
        Halting(sdpa_model, HaltingConfig(ratio=0.5), ratio=0.9)


def test_a_static_cache_without_the_full_attention_mask_is_refused():
    """Where every layer has a sliding window, ``generate`` hands a static prefill only windowed masks, whose last
    row does not say which prompt tokens are valid: an error, not a guess."""
    sliding_only = {"sliding_attention": torch.ones(1, 1, 4, 6, dtype=torch.bool)}
    with pytest.raises(ValueError, match="every layer has a sliding window"):
        prompt_validity(sliding_only, 1, 4, torch.device("cpu"))


def test_numpy_scalar_knobs_become_plain_numbers():
    import numpy as np

    config = HaltingConfig(ratio=np.float32(0.5), start_layer=np.int64(3), seed=np.int32(7), vision_ratio=np.float64(0.25))
    assert config == HaltingConfig(ratio=0.5, start_layer=3, seed=7, vision_ratio=0.25)
    assert (type(config.ratio), type(config.start_layer), type(config.seed)) == (float, int, int)
    with pytest.raises(TypeError, match="ratio"):
        HaltingConfig(ratio=np.bool_(True))

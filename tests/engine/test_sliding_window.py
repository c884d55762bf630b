"""Sliding-window layers shorter than the prompt, in every family that has them: Gemma-3 (local and
global layers alternate, each with its own rotary base), Mistral (a window on every layer), Qwen2
(a window from ``max_window_layers`` on). The window binds in the full-length layers, in the compact
layout after halting (where it is measured in sequence positions, not slots) and in the cache HF
trims to the window while decoding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, MistralConfig, Qwen2Config

from dash_vl.engine.masks import sliding_window_mask
from tests.reference import MaskingReference
from tests.text_cases import (
    PROMPT_LENGTH,
    all_but_last,
    assert_matches_reference,
    assert_ratio_zero_matches_unmodified,
    text_prompts,
)

WINDOW = 8
SIZES = dict(
    vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    sliding_window=WINDOW,
)
CONFIGS = {
    "gemma3": lambda: Gemma3TextConfig(
        **SIZES, head_dim=16, query_pre_attn_scalar=16, layer_types=["sliding_attention", "full_attention"] * 3
    ),
    "mistral": lambda: MistralConfig(**SIZES),
    "qwen2": lambda: Qwen2Config(**SIZES, use_sliding_window=True, max_window_layers=2),
}
assert PROMPT_LENGTH > 4 * WINDOW, "the window must bind well inside the prompt, even among the kept tokens"


@pytest.fixture(scope="module", params=[(family, kind) for family in sorted(CONFIGS) for kind in ("sdpa", "eager")],
                ids=lambda case: "-".join(case))
def windowed_model(request):
    family, implementation = request.param
    torch.manual_seed(0)
    config = CONFIGS[family]()
    config._attn_implementation = implementation
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(params=[1, 2], ids=["batch1", "batch2-left-padded"])
def prompts(request):
    return text_prompts(request.param)


def test_window_binds_in_these_models(windowed_model, prompts):
    """Guard for the other tests: without its window the model's logits change, so the window is exercised."""
    with torch.no_grad():
        windowed = windowed_model(**prompts).logits
        windowed_model.config.sliding_window = 4 * PROMPT_LENGTH
        try:
            unwindowed = windowed_model(**prompts).logits
        finally:
            windowed_model.config.sliding_window = WINDOW
    assert not torch.allclose(windowed[:, -1], unwindowed[:, -1], atol=1e-4)


def test_ratio_zero_matches_unmodified_windowed_model(windowed_model, prompts):
    assert_ratio_zero_matches_unmodified(windowed_model, prompts)


@pytest.mark.parametrize("start_layer", [2, 3])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_windowed_halting_matches_masking_reference(windowed_model, prompts, ratio, start_layer):
    reference = MaskingReference(windowed_model, ratio, start_layer, all_but_last(prompts))
    assert_matches_reference(windowed_model, prompts, reference, ratio=ratio, start_layer=start_layer)


def test_window_is_measured_in_positions_not_slots():
    """Compact slots hold positions 0, 5, 9, 10; the query at 10 with window 4 sees only 9 and 10."""
    positions = torch.tensor([[0, 5, 9, 10]])
    mask = sliding_window_mask("sdpa", torch.ones(1, 4, dtype=torch.bool), positions, 1, window=4, dtype=torch.float32)
    assert mask.flatten().tolist() == [False, False, True, True]


def test_flash_attention_refuses_a_binding_window():
    positions = torch.arange(4)[None]
    with pytest.raises(ValueError, match="sliding window over key slots"):
        sliding_window_mask("flash_attention_2", torch.ones(1, 4, dtype=torch.bool), positions, 1, 2, torch.float16)

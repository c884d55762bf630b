"""Gemma-3 text layers under the engine: the adapter's split of a layer into ``U`` and the normed
MLP, and every halting method that applies to text, with the decision layer right after a global
(full-attention) layer and right after a local (sliding-window) one. The sliding window itself is
covered for every family in ``test_sliding_window.py``."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from dash_vl import Halting
from dash_vl.adapters import adapter_for
from dash_vl.adapters.gemma3 import Gemma3TextAdapter
from dash_vl.methods import METHODS
from tests.reference import MaskingReference, capture_language_model_inputs
from tests.text_cases import all_but_last, assert_matches_reference, text_prompts

CONFIG = dict(
    vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=512, sliding_window=8,
    layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                 "full_attention"],
    pad_token_id=0, eos_token_id=1, bos_token_id=2,
)
AFTER_GLOBAL, AFTER_LOCAL = 1, 2  # decision layers whose layer l_s - 1 is global / local
SCORED = {"dash": "delta_attention", "dash_block": "delta_block", "dash_highest": "highest", "random": "random"}
LAYER_INPUT = ("fastv", "dart", "dart_prompt_order")
CHECKED_IN_TEST_STAGES = ("dash_multi", "snapkv")  # on Gemma-3 in tests/engine/test_stages.py


def gemma3(implementation: str):
    torch.manual_seed(0)
    config = Gemma3TextConfig(**CONFIG)
    config._attn_implementation = implementation
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def model():
    return gemma3("sdpa")


@pytest.fixture(scope="module")
def eager_twin():
    """The same weights under eager attention, which returns attention maps."""
    return gemma3("eager")


@pytest.fixture(params=[1, 2], ids=["batch1", "batch2-left-padded"])
def prompts(request):
    return text_prompts(request.param)


def test_gemma3_text_models_get_the_gemma3_adapter(model):
    assert model.config.model_type == "gemma3_text"
    assert isinstance(adapter_for(model), Gemma3TextAdapter)


def test_bidirectional_gemma3_is_refused():
    config = Gemma3TextConfig(**CONFIG, use_bidirectional_attention=True)
    with pytest.raises(ValueError, match="attends bidirectionally"):
        Halting(AutoModelForCausalLM.from_config(config), ratio=0.5)


@pytest.mark.parametrize("index", [AFTER_GLOBAL, AFTER_LOCAL])
def test_update_and_normed_mlp_rebuild_the_decoder_layer(model, index):
    """``feed_forward(h + U)`` is the HF layer's output: ``U`` is exactly what the layer adds before its MLP."""
    adapter, hidden = adapter_for(model), torch.randn(1, 12, CONFIG["hidden_size"], generator=torch.Generator().manual_seed(3))
    layer, kind = adapter.layers[index], CONFIG["layer_types"][index]
    kwargs = dict(position_embeddings=adapter.position_embeddings(hidden, torch.arange(12)[None], kind), attention_mask=None)
    with torch.no_grad():
        expected = layer(hidden, **kwargs)
        rebuilt = adapter.feed_forward(layer, hidden + adapter.attention_update(layer, hidden, **kwargs))
    torch.testing.assert_close(rebuilt, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("start_layer", [AFTER_GLOBAL, AFTER_LOCAL])
@pytest.mark.parametrize("method", sorted(SCORED))
def test_scored_methods_match_masking_reference(model, prompts, method, start_layer):
    reference = MaskingReference(model, 0.75, start_layer, all_but_last(prompts), score=SCORED[method])
    assert_matches_reference(model, prompts, reference, method=method, ratio=0.75, start_layer=start_layer)


def fastv_kept(eager_twin, prompts, ratio: float, layer: int) -> torch.Tensor:
    """FastV's rule on HF's eager attention maps (a local layer's map is zero outside its window): keep the
    ``round(N (1 - ratio))`` eligible tokens the last token attends to most in layer ``layer - 1``."""
    with torch.no_grad():
        attentions = eager_twin(**prompts, output_attentions=True).attentions
    received = attentions[layer - 1].mean(dim=1)[:, -1, :]
    eligible = all_but_last(prompts)
    kept = prompts["attention_mask"].bool() & ~eligible
    for b in range(kept.shape[0]):
        candidates = eligible[b].nonzero().flatten()
        top = received[b, candidates].topk(round(candidates.numel() * (1 - ratio))).indices
        kept[b, candidates[top]] = True
    return kept


@pytest.mark.parametrize("start_layer", [AFTER_GLOBAL, AFTER_LOCAL])
def test_fastv_matches_eager_attention_reference(model, eager_twin, prompts, start_layer):
    """At ρ = 0.9 FastV keeps at most 4 tokens, fewer than the window's 7 eligible ones: after a local layer
    the tokens it keeps are all inside the window, not ties among the zeros outside it."""
    kept = fastv_kept(eager_twin, prompts, 0.9, start_layer)
    reference = MaskingReference(model, 0.9, start_layer, kept, given_active=kept)
    assert_matches_reference(model, prompts, reference, method="fastv", scope="all", ratio=0.9, start_layer=start_layer)


@pytest.mark.parametrize("method", ["dart", "dart_prompt_order"])
@pytest.mark.parametrize("start_layer", [AFTER_GLOBAL, AFTER_LOCAL])
def test_dart_runs_its_kept_tokens_like_the_masking_reference(model, prompts, start_layer, method):
    """DART's own rule is checked on the VL families; here its kept set, whatever it is, runs as the reference runs it."""
    positions = capture_language_model_inputs(model, prompts).position_ids  # DART's key norms depend on them
    with Halting(model, method=method, scope="all", ratio=0.5, start_layer=start_layer) as halting, torch.no_grad():
        model(**prompts, position_ids=positions)
    kept = torch.zeros_like(prompts["attention_mask"], dtype=torch.bool)
    for b, positions in enumerate(halting.last_report.kept_positions):
        kept[b, positions] = True
    assert kept.sum() < prompts["attention_mask"].sum()
    reference = MaskingReference(model, 0.5, start_layer, kept, given_active=kept)
    assert_matches_reference(model, prompts, reference, method=method, scope="all", ratio=0.5, start_layer=start_layer)


def test_every_method_but_the_vision_encoder_ones_is_checked_here(model):
    from dash_vl.methods.pre_llm import BeforeLanguageModel

    vision_only = {
        name for name, method in METHODS.items()
        if method.needs_vision_evidence or issubclass(method, BeforeLanguageModel) or name == "pyramiddrop"
    }
    assert set(SCORED) | set(LAYER_INPUT) | set(CHECKED_IN_TEST_STAGES) == set(METHODS) - vision_only
    for name in vision_only:
        with pytest.raises(ValueError, match="scope='visual' needs a model with visual tokens"):
            Halting(model, method=name, ratio=0.5)

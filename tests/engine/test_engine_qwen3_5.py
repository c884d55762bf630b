"""The engine on a tiny random Qwen3.5 (linear-attention and full-attention layers alternating): equal to
HF with nothing halted; otherwise equal to the active-sequence reference, in which halted tokens leave
the linear layers' recurrent and convolution states from ``l_s`` on; what it cannot run is refused."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from dash_vl import Halting, hf_compat
from dash_vl.methods import METHODS
from tests.active_sequence_reference import ActiveSequenceReference, assert_engine_matches
from tests.conftest import model_of, processor_of, vl_inputs
from tests.engine.test_packed import assert_packed_matches_padded, packed_calls  # noqa: F401 (fixture)
from tests.engine.test_static_decode import assert_same_decoding, greedy, halted_on_both_caches
from tests.reference import STEPS, assert_ratio_zero_identical, capture_language_model_inputs, eligible_tokens, generate
from tests.text_cases import assert_ratio_zero_matches_unmodified, text_prompts

FAMILY = "qwen3_5"
LINEAR_LAYER, FULL_LAYER = 2, 1
"""Decision layers of the tiny model: layer 2 mixes with a gated delta net, layer 1 attends."""


@pytest.fixture(scope="module")
def model():
    return model_of(FAMILY, "sdpa")


@pytest.fixture(scope="module")
def padded_batch():
    """Two prompts of one image each, of different sizes: left-padded."""
    return vl_inputs(processor_of(FAMILY), 2, "image")


def test_layers_of_both_kinds(model):
    assert set(model.config.text_config.layer_types[:3]) == {"linear_attention", "full_attention"}
    assert model.config.text_config.layer_types[LINEAR_LAYER] == "linear_attention"
    assert model.config.text_config.layer_types[FULL_LAYER] == "full_attention"


def test_ratio_zero_matches_unmodified_model(model, padded_batch):
    assert_ratio_zero_identical(model, padded_batch)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "multi_image"])
def test_ratio_zero_matches_unmodified_eager_model(kind):
    assert_ratio_zero_identical(model_of(FAMILY, "eager"), vl_inputs(processor_of(FAMILY), 1, kind))


def engine_run(model, prompt, question_tokens: int | None = None, **knobs):
    """The halted prefill's report and logits, and ``generate``'s greedy steps (``question_tokens``: the
    question's length for ``question="after_context"``)."""
    with Halting(model, **knobs) as halting, ExitStack() as stack:
        if question_tokens is not None:
            stack.enter_context(halting.question_length(question_tokens))
        with torch.no_grad():
            logits = model(**prompt).logits
        report = halting.last_report
        produced = generate(model, prompt)
    return report, logits, produced


def assert_matches_reference(
    model, prompt, reference: ActiveSequenceReference, question_tokens: int | None = None, **knobs
) -> None:
    results = reference.run(capture_language_model_inputs(model, prompt), STEPS)
    report, logits, produced = engine_run(model, prompt, question_tokens, **knobs)
    assert_engine_matches(report, results, prompt["attention_mask"].bool(), logits, produced, STEPS)


@pytest.mark.slow
def test_reference_with_nothing_halted_matches_unmodified_model(model, padded_batch):
    """Guards the reference: at ratio 0 (every token active) it reproduces HF's prefill and greedy decoding."""
    reference = ActiveSequenceReference(model, 0.0, LINEAR_LAYER, eligible_tokens(model, padded_batch, "all", "halted"))
    results = reference.run(capture_language_model_inputs(model, padded_batch), STEPS)
    with torch.no_grad():
        expected_logits = model(**padded_batch).logits
    expected = generate(model, padded_batch)
    for b, result in enumerate(results):
        positions = padded_batch["attention_mask"][b].bool().nonzero().flatten()
        torch.testing.assert_close(result.logits, expected_logits[b, positions], rtol=1e-5, atol=1e-5)
        assert torch.equal(result.tokens, expected.sequences[b, -STEPS:])


def test_dash_at_a_linear_layer_matches_reference(model, padded_batch):
    """Left-padded batch: from the linear decision layer on, each prompt's recurrence holds its active tokens only."""
    reference = ActiveSequenceReference(model, 0.5, LINEAR_LAYER, eligible_tokens(model, padded_batch, "all", "halted"))
    assert_matches_reference(model, padded_batch, reference, ratio=0.5, start_layer=LINEAR_LAYER, scope="all")


def test_dash_after_context_at_a_linear_layer_matches_reference(model, padded_batch):
    """``question="after_context"`` (the DASH paper's protocol): the context is prefilled with halting, then the
    last 4 tokens, the question, run every layer, continuing each linear layer's recurrence from the state the
    context left: the whole prompt's below ``l_s``, the active tokens' from ``l_s`` on. In the reference the
    question is 4 tokens that are never halted (the decision over the context is causal, so the question's
    presence does not change it)."""
    question_tokens = 4
    eligible = padded_batch["attention_mask"].bool().clone()
    eligible[:, -question_tokens:] = False
    reference = ActiveSequenceReference(model, 0.5, LINEAR_LAYER, eligible)
    assert_matches_reference(
        model, padded_batch, reference, question_tokens, ratio=0.5, start_layer=LINEAR_LAYER, scope="all",
        question="after_context",
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind,batch", [("image", 2), ("multi_image", 1)])
def test_dash_at_a_full_attention_layer_matches_reference(model, kind, batch):
    prompt = vl_inputs(processor_of(FAMILY), batch, kind)
    reference = ActiveSequenceReference(model, 0.75, FULL_LAYER, eligible_tokens(model, prompt, "visual", "halted"))
    assert_matches_reference(model, prompt, reference, ratio=0.75, start_layer=FULL_LAYER, scope="visual")


@pytest.mark.slow
def test_dash_with_two_images_at_a_linear_layer_matches_reference(model):
    prompt = vl_inputs(processor_of(FAMILY), 1, "multi_image")
    reference = ActiveSequenceReference(model, 0.5, LINEAR_LAYER, eligible_tokens(model, prompt, "all", "protected"))
    assert_matches_reference(model, prompt, reference, ratio=0.5, start_layer=LINEAR_LAYER, question="protected")


@pytest.mark.slow
def test_dash_on_a_video_matches_reference(model):
    """A 4-frame video (interleaved M-RoPE over time): the linear layers' states hold its active frames' tokens only."""
    prompt = vl_inputs(processor_of(FAMILY), 1, "video")
    reference = ActiveSequenceReference(model, 0.75, LINEAR_LAYER, eligible_tokens(model, prompt, "visual", "halted"))
    assert_matches_reference(model, prompt, reference, ratio=0.75, start_layer=LINEAR_LAYER, scope="visual")


def fastv_kept(prompt, ratio: float, layer: int) -> torch.Tensor:
    """FastV's rule on HF's eager attention maps (recorded for the full-attention layers only): keep the
    ``round(N (1 - ratio))`` visual tokens the last token attends to most in layer ``layer - 1``."""
    eager = model_of(FAMILY, "eager")
    with torch.no_grad():
        attentions = eager(**prompt, output_attentions=True).attentions
    full_layers = [i for i, kind in enumerate(eager.config.text_config.layer_types) if kind == "full_attention"]
    received = attentions[full_layers.index(layer - 1)].mean(dim=1)[:, -1, :]
    eligible = eligible_tokens(eager, prompt, "visual", "halted")
    kept = prompt["attention_mask"].bool() & ~eligible
    for b in range(kept.shape[0]):
        candidates = eligible[b].nonzero().flatten()
        top = received[b, candidates].topk(round(candidates.numel() * (1 - ratio))).indices
        kept[b, candidates[top]] = True
    return kept


@pytest.mark.slow
def test_fastv_matches_reference_on_its_kept_tokens(model, padded_batch):
    """FastV at K = 2 reads full-attention layer 1 and decides entering linear layer 2."""
    kept = fastv_kept(padded_batch, 0.5, LINEAR_LAYER)
    reference = ActiveSequenceReference(model, 0.5, LINEAR_LAYER, kept, given_active=kept)
    assert_matches_reference(model, padded_batch, reference, method="fastv", ratio=0.5, start_layer=LINEAR_LAYER)


def test_fastv_after_a_linear_layer_is_refused(model, padded_batch):
    with Halting(model, method="fastv", ratio=0.5, start_layer=3), torch.no_grad():
        with pytest.raises(ValueError, match="layer 2, .* linear-attention layer"):
            model(**padded_batch)


PACKED_CASES = [
    pytest.param(dict(ratio=0.5, start_layer=LINEAR_LAYER, scope="all"), id="dash-linear-layer"),
    pytest.param(dict(ratio=0.75, start_layer=FULL_LAYER, scope="visual"), id="dash-full-layer", marks=pytest.mark.slow),
    pytest.param(dict(method="fastv", ratio=0.5, start_layer=LINEAR_LAYER), id="fastv", marks=pytest.mark.slow),
    pytest.param(dict(ratio=0.0), id="ratio-0", marks=pytest.mark.slow),
]


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.parametrize("knobs", PACKED_CASES)
def test_packed_prefill_matches_padded(model, padded_batch, knobs, packed_calls):  # noqa: F811 (the fixture)
    """Packed, the attention layers run over the valid (then kept) tokens end to end, while the linear layers run
    padded, row by row: a sample's recurrence never continues from another's state (the logits and greedy steps
    differ where the linear layers run over the packed sequence)."""
    assert_packed_matches_padded(model, padded_batch, packed_calls, **knobs)


STATIC_CASES = [
    pytest.param(dict(ratio=0.5, start_layer=LINEAR_LAYER, scope="all"), None, id="dash-linear-layer"),
    pytest.param(dict(ratio=0.75, start_layer=FULL_LAYER, scope="visual"), None, id="dash-full-layer", marks=pytest.mark.slow),
    pytest.param(
        dict(ratio=0.5, start_layer=LINEAR_LAYER, scope="all", question="after_context"), 4, id="dash-after-context",
        marks=pytest.mark.slow,
    ),
    pytest.param(dict(method="fastv", ratio=0.5, start_layer=LINEAR_LAYER), None, id="fastv", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("knobs", "question_tokens"), STATIC_CASES)
def test_static_decoding_equals_eager_decoding(model, padded_batch, knobs, question_tokens):
    """Over a static cache the linear layers decode from the states the halted prefill left (the active tokens'
    from ``l_s`` on), updated in place: the same greedy tokens and logits as the engine's dynamic-cache decoding."""
    dynamic, static = halted_on_both_caches(model, padded_batch, question_tokens, **knobs)
    assert_same_decoding(dynamic, static)


def test_ratio_zero_on_a_static_cache_matches_hf_static(model, padded_batch):
    unmodified = greedy(model, padded_batch, "static")
    with Halting(model, ratio=0.0):
        halted = greedy(model, padded_batch, "static")
    assert_same_decoding(unmodified, halted)


def test_a_second_static_prefill_of_the_same_shape_reuses_the_recurrent_states_in_place(model, padded_batch):
    """A later ``generate`` of the same shape (other pixels) copies its prefill's states into the tensors the first
    one laid out (what a recorded CUDA graph reads), and decodes what the dynamic cache decodes for it."""
    other = dict(padded_batch, pixel_values=padded_batch["pixel_values"].flip(-1))
    with Halting(model, ratio=0.5, start_layer=LINEAR_LAYER, scope="all") as halting:
        first = greedy(model, padded_batch, "static")
        decoder = halting.engine._decoder
        addresses = {index: [state.data_ptr() for state in hf_compat.recurrent_states(layer)] for index, layer in decoder.slots.recurrent.items()}
        reused = greedy(model, other, "static")
        assert halting.engine._decoder is decoder
        assert addresses and all(
            [state.data_ptr() for state in hf_compat.recurrent_states(layer)] == addresses[index]
            for index, layer in decoder.slots.recurrent.items()
        )
    dynamic, _ = halted_on_both_caches(model, other, None, ratio=0.5, start_layer=LINEAR_LAYER, scope="all")
    assert not torch.equal(dynamic.sequences, first.sequences)  # the first prompt's states would decode otherwise
    assert_same_decoding(dynamic, reused)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs are recorded on a GPU")
def test_recorded_graphs_decode_what_the_dynamic_cache_decodes_on_a_gpu(padded_batch):
    """Real CUDA graphs (float32): the linear layers' in-place state updates are recorded by the first call and
    replayed by a second of the same shape over its own prompt; each answers what the dynamic cache answers."""
    model = model_of(FAMILY, "sdpa").cuda()
    other = dict(padded_batch, pixel_values=padded_batch["pixel_values"].flip(-1))
    prompts = [{name: tensor.cuda() for name, tensor in found.items()} for found in (padded_batch, other)]
    halting = Halting(model, ratio=0.5, start_layer=LINEAR_LAYER, scope="all")
    decoders = []
    for found in prompts:
        with halting:
            static = greedy(model, found, "static")
            decoders.append(halting.engine._decoder)
            dynamic = greedy(model, found, None)
        assert decoders[-1].graph is not None
        assert_same_decoding(dynamic, static, tolerance=1e-4)
    assert decoders[0] is decoders[1]


def test_encoder_halting_is_refused(model):
    with pytest.raises(NotImplementedError, match="Qwen3_5Adapter has no encoder adapter"):
        Halting(model, ratio=0.5, vision_ratio=0.5)


ATTENTION_READERS = {"snapkv": dict(start_layer=3), "pyramiddrop": dict(start_layer=1, stage_layers=(3, 5))}
"""Methods that read attention weights at their decision layers, placed on the tiny model's full-attention
layers (their defaults fall on linear ones); FastV's default K = 2 reads full-attention layer 1."""


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_halts_one_image(model, method):
    """Every method prefills and decodes a one-image prompt (its default layers, or :data:`ATTENTION_READERS`')."""
    prompt = vl_inputs(processor_of(FAMILY), 1, "image")
    with Halting(model, method=method, ratio=0.5, **ATTENTION_READERS.get(method, {})) as halting:
        produced = model.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert produced.shape[1] == prompt["input_ids"].shape[1] + 2
    assert halting.last_report.kept_tokens_per_layer[-1][0] < prompt["input_ids"].shape[1]


@pytest.mark.parametrize("method", sorted(ATTENTION_READERS))
def test_attention_readers_on_linear_layers_are_refused(model, method):
    prompt = vl_inputs(processor_of(FAMILY), 1, "image")
    with Halting(model, method=method, ratio=0.5), torch.no_grad():
        with pytest.raises(ValueError, match="linear-attention \\(gated delta net\\) layer"):
            model(**prompt)


def tiny_text_model():
    """``Qwen3_5ForCausalLM`` with the tiny model's layers (linear and full attention alternating)."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    config = Qwen3_5TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=97, pad_token_id=0, eos_token_id=1, bos_token_id=2, full_attention_interval=2,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return Qwen3_5ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def text_model():
    return tiny_text_model()


def test_text_model_ratio_zero_matches_unmodified_model(text_model):
    assert_ratio_zero_matches_unmodified(text_model, text_prompts(2))


@pytest.mark.slow
def test_text_model_dash_matches_reference(text_model):
    prompts = text_prompts(2)
    eligible = prompts["attention_mask"].bool().clone()
    eligible[:, -1] = False
    reference = ActiveSequenceReference(text_model, 0.5, LINEAR_LAYER, eligible)
    assert_matches_reference(text_model, prompts, reference, ratio=0.5, start_layer=LINEAR_LAYER)

"""Decoding over a static KV cache under halting (``generate(cache_implementation="static")``).

On the CPU the static steps run uncompiled; they must decode exactly what the engine's eager steps
over the dynamic cache decode (float32: the same tokens, the same logits to rounding), for both
halting protocols, a left-padded batch, M-RoPE (Qwen2-VL) and sliding windows; at ratio 0 they
must match HF's own static path. The layout: per layer its prefill slots plus the static cache's
room for new tokens (the full prompt below ``l_s``, the compact set from ``l_s``).
"""

from __future__ import annotations

from contextlib import ExitStack
from unittest.mock import PropertyMock, patch

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig, StaticCache

from dash_vl import Halting, HaltingConfig
from dash_vl.api import VisionLanguageModel
from dash_vl.cli import build_parser
from dash_vl.engine.language_model import HaltingEngine
from dash_vl.engine.static_slots import SLOT_ALIGNMENT
from dash_vl.hf_compat import CACHE_KEYWORD, output_cache
from dash_vl.knobs import config_from_arguments
from tests.conftest import model_of, vl_inputs
from tests.engine.test_generate_contract import text_prompts, tiny_qwen2
from tests.engine.test_host_waits import HOST_READS, HostReadCounter, OpCounter

NEW_TOKENS = 6
START_LAYER = 2
CASES = [("dash", "halted"), ("fastv", "halted"), ("dash", "after_context"), ("pyramiddrop", "halted"), ("dash_multi", "halted")]


def greedy(model, prompts: dict, cache_implementation: str | None, **options) -> object:
    with torch.no_grad():
        return model.generate(
            **prompts, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
            return_dict_in_generate=True, cache_implementation=cache_implementation, **options,
        )


def assert_same_decoding(dynamic, static, tolerance: float = 1e-5) -> None:
    """The same greedy tokens, and each step's logits within ``tolerance`` (relative and absolute)."""
    assert torch.equal(dynamic.sequences, static.sequences)
    for eager_logits, static_logits in zip(dynamic.logits, static.logits, strict=True):
        torch.testing.assert_close(static_logits, eager_logits, rtol=tolerance, atol=tolerance)


def halted_on_both_caches(model, prompts: dict, question_tokens: int | None = None, **knobs) -> tuple[object, object]:
    """The same halted ``generate`` over the dynamic cache and over a static one."""
    outputs = []
    for cache_implementation in (None, "static"):
        halting = Halting(model, **{"start_layer": START_LAYER, **knobs})
        with ExitStack() as stack:
            stack.enter_context(halting)
            if question_tokens is not None:
                stack.enter_context(halting.question_length(question_tokens))
            outputs.append(greedy(model, prompts, cache_implementation))
    return outputs[0], outputs[1]


@pytest.mark.parametrize(("method", "question"), CASES, ids=["-".join(case) for case in CASES])
def test_static_decoding_equals_eager_decoding_on_a_padded_image_batch(sdpa_model, processor, method, question):
    """Qwen2-VL (M-RoPE), two left-padded image prompts, the visual tokens halted (``after_context``: the
    last 4 tokens are the question)."""
    prompts = vl_inputs(processor, 2)
    question_tokens = 4 if question == "after_context" else None
    dynamic, static = halted_on_both_caches(
        sdpa_model, prompts, question_tokens, method=method, ratio=0.5, question=question
    )
    assert_same_decoding(dynamic, static)


@pytest.mark.parametrize(("question", "implementation"), [("halted", "sdpa"), ("after_context", "sdpa"), ("halted", "eager")])
def test_static_decoding_equals_eager_decoding_on_text_prompts(question, implementation):
    """A text LLM, every token eligible, one prompt left-padded; ``after_context`` with a 5-token question; under
    eager attention the prefill reads the prompt's padding from an additive mask."""
    model = tiny_qwen2()
    model.config._attn_implementation = implementation
    dynamic, static = halted_on_both_caches(
        model, text_prompts(), question_tokens=5 if question == "after_context" else None,
        method="dash", ratio=0.5, scope="all", question=question,
    )
    assert_same_decoding(dynamic, static)


def test_static_decoding_equals_eager_decoding_under_sliding_windows():
    """Gemma-3's local layers (window 8, shorter than the prompt and than the kept set): the static steps mask
    the window in the positions the slots hold."""
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=512, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"] * 2, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).eval()
    dynamic, static = halted_on_both_caches(model, text_prompts(), method="dash", ratio=0.5, scope="all")
    assert_same_decoding(dynamic, static)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2"])
def test_ratio_zero_on_a_static_cache_matches_hf_static(processor, family):
    model = tiny_qwen2() if family == "qwen2" else model_of("qwen2_vl", "sdpa")
    prompts = text_prompts() if family == "qwen2" else vl_inputs(processor, 2)
    unmodified = greedy(model, prompts, "static")
    with Halting(model, ratio=0.0):
        halted = greedy(model, prompts, "static")
    assert_same_decoding(unmodified, halted)


def test_static_layout_gives_each_layer_its_prefill_slots_and_the_room_for_new_tokens(sdpa_model, processor):
    """Layers ``< l_s`` hold ``T + room`` slots, layers ``>= l_s`` the compact width ``K + room``, ``room`` being what
    the static cache was sized for after the prompt, each rounded up to a multiple of ``SLOT_ALIGNMENT`` (the room is
    picked so that ``T + room`` is not one already); the cache reports the prompt plus the tokens fed back."""
    prompts = vl_inputs(processor, 2)
    prompt_slots = prompts["input_ids"].shape[1]
    room = next(room for room in range(10, 20) if (prompt_slots + room) % SLOT_ALIGNMENT)
    with Halting(sdpa_model, ratio=0.5, start_layer=START_LAYER) as halting:
        output = greedy(sdpa_model, prompts, "static", max_cache_len=prompt_slots + room)
    compact_slots = max(halting.last_report.kept_tokens_per_layer[-1])
    layers = len(halting.last_report.kept_tokens_per_layer)
    cache = output_cache(output)

    def aligned(slots: int) -> int:
        return -(-slots // SLOT_ALIGNMENT) * SLOT_ALIGNMENT

    expected = [aligned(prompt_slots + room)] * START_LAYER + [aligned(compact_slots + room)] * (layers - START_LAYER)
    assert [layer.keys.shape[2] for layer in cache.layers] == expected
    assert int(cache.get_seq_length()) == prompt_slots + NEW_TOKENS - 1


def prefilled_static_cache(model, prompts: dict, room: int) -> StaticCache:
    cache = StaticCache(config=model.config, max_cache_len=prompts["input_ids"].shape[1] + room)
    model(**prompts, **{CACHE_KEYWORD: cache})
    return cache


def test_several_new_tokens_in_one_call_on_a_static_cache_equal_the_dynamic_cache():
    """A later call of three tokens at once (causal among them), then one more, as over the dynamic cache."""
    model, prompts = tiny_qwen2(), text_prompts()
    appended = torch.randint(3, 97, (2, 3), generator=torch.Generator().manual_seed(1))
    logits = {}
    with Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all"), torch.no_grad():
        for kind in ("dynamic", "static"):
            cache = prefilled_static_cache(model, prompts, room=4) if kind == "static" else None
            if cache is None:
                cache = output_cache(model(**prompts))
            mask = torch.cat([prompts["attention_mask"], torch.ones(2, 3, dtype=torch.long)], dim=1)
            first = model(input_ids=appended, attention_mask=mask, **{CACHE_KEYWORD: cache}).logits
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            second = model(input_ids=appended[:, :1], attention_mask=mask, **{CACHE_KEYWORD: cache}).logits
            logits[kind] = (first, second)
    for dynamic, static in zip(logits["dynamic"], logits["static"]):
        torch.testing.assert_close(static, dynamic, rtol=1e-5, atol=1e-5)


def test_writing_past_the_static_cache_room_is_an_error():
    model, prompts = tiny_qwen2(), text_prompts()
    with Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all"), torch.no_grad():
        cache = prefilled_static_cache(model, prompts, room=2)
        model(input_ids=torch.full((2, 2), 5), **{CACHE_KEYWORD: cache})
        with pytest.raises(ValueError, match="room for 2 new tokens"):
            model(input_ids=torch.full((2, 1), 5), **{CACHE_KEYWORD: cache})


def test_a_static_cache_filled_without_halting_is_refused():
    model, prompts = tiny_qwen2(), text_prompts()
    with torch.no_grad():
        cache = prefilled_static_cache(model, prompts, room=4)
        with Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all"), pytest.raises(ValueError, match="empty static cache"):
            model(input_ids=torch.full((2, 1), 5), **{CACHE_KEYWORD: cache})


@pytest.mark.parametrize("method", ["dash", "fastv"])
def test_static_decode_steps_read_nothing_to_the_host(sdpa_model, processor, method):
    """Every later call over the static layout runs without a host read in dash_vl code (FastV included,
    whose dynamic-cache steps read their padding once): what a CUDA graph needs."""
    counter = HostReadCounter()
    original = HaltingEngine._static_extend

    def counted(engine, *args, **kwargs):
        counter.counting = True
        try:
            return original(engine, *args, **kwargs)
        finally:
            counter.counting = False

    calls = []
    with ExitStack() as stack, Halting(sdpa_model, method=method, ratio=0.75, start_layer=2):
        for name in HOST_READS:
            stack.enter_context(patch.object(torch.Tensor, name, counter.wrap(name)))
        stack.enter_context(patch.object(HaltingEngine, "_static_extend", lambda *a, **k: calls.append(1) or counted(*a, **k)))
        greedy(sdpa_model, vl_inputs(processor, 2), "static")
    assert len(calls) == NEW_TOKENS - 1
    assert counter.places == []


@pytest.mark.slow
def test_a_static_decode_step_dispatches_the_same_operators_whatever_the_method(sdpa_model, processor):
    """Fixed shapes: DASH and FastV dispatch the same operators per static step (their layouts differ in
    lengths only, and FastV's padding is never read on the host)."""
    prompts = vl_inputs(processor, 1)

    def per_step(method: str) -> int:
        counts = []
        for new_tokens in (2, 4):
            with ExitStack() as stack, torch.no_grad():
                stack.enter_context(Halting(sdpa_model, method=method, ratio=0.75, start_layer=2))
                counter = stack.enter_context(OpCounter())
                sdpa_model.generate(
                    **prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                    cache_implementation="static", max_cache_len=prompts["input_ids"].shape[1] + 4,
                )
            counts.append(counter.count)
        return counts[1] - counts[0]

    dash, fastv = per_step("dash"), per_step("fastv")
    assert dash == fastv > 0


def test_halting_keeps_generate_from_compiling_and_restores_the_setting():
    model = tiny_qwen2()
    model.generation_config.disable_compile = False
    with Halting(model, ratio=0.5):
        assert model.generation_config.disable_compile is True
    assert model.generation_config.disable_compile is False


def test_compiled_decode_must_be_a_bool():
    with pytest.raises(TypeError, match="compiled_decode must be a bool"):
        HaltingConfig(compiled_decode="no")


def test_answers_use_a_static_cache_on_a_gpu_unless_compiled_decode_is_off(sdpa_model, processor):
    """``dash_vl.load``'s answers (and so the CLI and the lmms-eval models) generate with a static cache on a GPU."""
    on_gpu = patch.object(type(sdpa_model), "device", new_callable=PropertyMock, return_value=torch.device("cuda"))
    assert VisionLanguageModel(sdpa_model, processor, HaltingConfig(ratio=0.5)).cache_options() == {}
    with on_gpu:
        assert VisionLanguageModel(sdpa_model, processor, HaltingConfig(ratio=0.5)).cache_options() == {
            "cache_implementation": "static"
        }
        assert VisionLanguageModel(sdpa_model, processor, HaltingConfig(ratio=0.5, compiled_decode=False)).cache_options() == {}


def test_the_cli_and_lmms_eval_turn_compiled_decode_off():
    args = build_parser().parse_args(["ask", "-q", "q", "--compiled-decode", "false"])
    assert config_from_arguments(args).compiled_decode is False
    assert config_from_arguments(build_parser().parse_args(["ask", "-q", "q"])).compiled_decode is True
    lmms_eval_models = pytest.importorskip("dash_vl.integrations.lmms_eval.models")
    args = {"method": "dash", "ratio": "0.5", "compiled_decode": "False"}
    assert lmms_eval_models.halting_config(args).compiled_decode is False
    with pytest.raises(ValueError, match="compiled_decode must be true or false"):
        lmms_eval_models.halting_config({"method": "dash", "ratio": "0.5", "compiled_decode": "sometimes"})


class EagerGraph:
    """Stands in for :class:`~dash_vl.engine.decode_graph.DecodeGraph` on the CPU: it keeps the step and input buffers
    of its own as a recorded graph does, and each replay runs the recorded step on those buffers, so a step
    replayed over buffers that another prompt left would decode wrong tokens. Counts what it records and replays."""

    recorded = 0
    replayed = 0

    @staticmethod
    def supported(device: torch.device) -> bool:
        return True

    def __init__(self, step, hidden: torch.Tensor, rope_ids: torch.Tensor) -> None:
        self.step, self.hidden, self.rope_ids = step, hidden.clone(), rope_ids.clone()
        EagerGraph.recorded += 1

    def fits(self, hidden: torch.Tensor, rope_ids: torch.Tensor) -> bool:
        return hidden.shape == self.hidden.shape and rope_ids.shape == self.rope_ids.shape

    def __call__(self, hidden: torch.Tensor, rope_ids: torch.Tensor) -> torch.Tensor:
        self.hidden.copy_(hidden)
        self.rope_ids.copy_(rope_ids)
        EagerGraph.replayed += 1
        return self.step(self.hidden, self.rope_ids).clone()


@pytest.fixture
def eager_graphs():
    """Decode steps recorded and replayed as on a GPU, by :class:`EagerGraph`."""
    EagerGraph.recorded = EagerGraph.replayed = 0
    with patch("dash_vl.engine.language_model.DecodeGraph", EagerGraph):
        yield EagerGraph


def other_text_prompts() -> dict:
    """:func:`text_prompts`' shapes and padding, other tokens."""
    prompts = text_prompts()
    prompts["input_ids"] = torch.randint(3, 97, prompts["input_ids"].shape, generator=torch.Generator().manual_seed(7))
    prompts["input_ids"][prompts["attention_mask"] == 0] = 0
    return prompts


def dynamic_cache_answer(model, prompts: dict) -> object:
    with Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all"):
        return greedy(model, prompts, None)


def test_a_later_generate_of_the_same_shape_reuses_the_layout_and_replays_its_graph_from_the_first_step(eager_graphs):
    """The second call lays its prompt out in the first call's buffers and replays the recorded step at every
    step (none eager, none recorded), and still decodes what the dynamic cache decodes for its own prompt."""
    model = tiny_qwen2()
    halting = Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all")
    answers = []
    for prompts in (text_prompts(), other_text_prompts()):
        with halting:
            answers.append(greedy(model, prompts, "static"))
        if len(answers) == 1:
            first_decoder = halting.engine._decoder
    assert halting.engine._decoder is first_decoder
    assert eager_graphs.recorded == 1
    assert eager_graphs.replayed == (NEW_TOKENS - 2) + (NEW_TOKENS - 1)  # the first call: one eager step, then replays
    assert_same_decoding(dynamic_cache_answer(model, text_prompts()), answers[0])
    assert_same_decoding(dynamic_cache_answer(model, other_text_prompts()), answers[1])


@pytest.mark.parametrize("change", ["room", "batch", "weights"])
def test_a_later_generate_of_another_shape_or_weights_lays_out_and_records_anew(eager_graphs, change):
    """Another room for new tokens, another batch, or weights moved to new memory: new buffers, a new recording,
    and the answer of the dynamic cache."""
    model = tiny_qwen2()
    halting = Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all")
    with halting:
        greedy(model, text_prompts(), "static")
    first_decoder = halting.engine._decoder
    prompts, options = text_prompts(), {}
    if change == "room":
        options["max_cache_len"] = prompts["input_ids"].shape[1] + NEW_TOKENS + 3
    if change == "batch":
        prompts = {name: tensor[:1] for name, tensor in prompts.items()}
    if change == "weights":
        projection = model.model.layers[-1].mlp.down_proj
        projection.weight.data = projection.weight.data.clone()
    with halting:
        second = greedy(model, prompts, "static", **options)
    assert halting.engine._decoder is not first_decoder
    assert eager_graphs.recorded == 2
    assert_same_decoding(dynamic_cache_answer(model, prompts), second)


def test_decoding_on_a_static_cache_whose_buffers_a_later_prompt_took_over_is_an_error(eager_graphs):
    model, prompts = tiny_qwen2(), text_prompts()
    with Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all"), torch.no_grad():
        earlier = output_cache(greedy(model, prompts, "static"))
        latest = output_cache(greedy(model, other_text_prompts(), "static"))
        assert latest is not earlier
        with pytest.raises(ValueError, match="now hold a later prompt"):
            model(input_ids=torch.full((2, 1), 5), **{CACHE_KEYWORD: earlier})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs are recorded on a GPU")
def test_recorded_graphs_decode_what_the_dynamic_cache_decodes_in_every_call_on_a_gpu():
    """Real CUDA graphs (float32): a first call records, a second of the same shape replays that graph over its own
    prompt, a third with more room records anew; each answers what the dynamic cache answers."""
    model = tiny_qwen2().cuda()
    prompts = [{name: tensor.cuda() for name, tensor in found.items()} for found in (text_prompts(), other_text_prompts())]
    halting = Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all")
    room = prompts[0]["input_ids"].shape[1] + NEW_TOKENS
    decoders = []
    for found, cache_len in ((prompts[0], room), (prompts[1], room), (prompts[1], room + 3)):
        with halting:
            static = greedy(model, found, "static", max_cache_len=cache_len)
            decoders.append(halting.engine._decoder)
            dynamic = greedy(model, found, None)
        assert decoders[-1].graph is not None
        assert_same_decoding(dynamic, static, tolerance=1e-4)
    assert decoders[0] is decoders[1] is not decoders[2]


def test_beam_search_on_a_static_cache_is_an_error():
    model, prompts = tiny_qwen2(), text_prompts()
    with Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all"), torch.no_grad():
        with pytest.raises(ValueError, match="beam search on a static cache"):
            model.generate(**prompts, max_new_tokens=3, num_beams=2, do_sample=False, cache_implementation="static")


def test_resetting_a_static_cache_laid_out_while_halting_is_an_error():
    """HF's pattern of reusing one StaticCache by ``reset()`` would feed the next prompt to the engine as new tokens."""
    model, prompts = tiny_qwen2(), text_prompts()
    with Halting(model, ratio=0.5, start_layer=START_LAYER, scope="all"), torch.no_grad():
        cache = prefilled_static_cache(model, prompts, room=2)
        with pytest.raises(ValueError, match="cannot be reset"):
            cache.reset()

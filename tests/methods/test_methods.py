"""The ablations and the FastV / DART baselines (DART in its official pivot order and ours): each equals a slow reference of its published rule
(kept tokens, prefill logits, 16 decode steps), on every VL family; kept counts follow the
documented formulas up to extreme ratios."""

from __future__ import annotations

import math

import pytest
import torch

from dash_vl import Halting
from dash_vl.hf_compat import output_cache
from tests.conftest import ALL_FAMILY_NAMES, family_kinds, four_image_prompt, model_of, processor_of, vl_inputs
from tests.engine.test_engine_text_llm import SIZES
from tests.engine.test_packed import text_model
from tests.reference import (
    STEPS,
    MaskingReference,
    assert_engine_matches_reference,
    capture_language_model_inputs,
    eligible_tokens,
    generate,
    language_model_of,
    with_deepstack,
)

FAMILY_PROMPTS = family_kinds(("image", "video"))


def vl_case(family: str, kind: str) -> tuple:
    return model_of(family, "sdpa"), vl_inputs(processor_of(family), 2, kind)


def run_engine(model, inputs, position_ids=None, **knobs):
    """Prefill logits (with ``generate``'s position ids where given), the prefill's report, and ``generate``."""
    with Halting(model, **knobs) as halting:
        with torch.no_grad():
            logits = model(**inputs, position_ids=position_ids).logits
        report = halting.last_report
        produced = generate(model, inputs)
    return report, logits, produced


def check_against(reference: MaskingReference, model, inputs, **knobs) -> None:
    lm_inputs = capture_language_model_inputs(model, inputs)
    with torch.no_grad():
        expected_logits = model.lm_head(reference.prefill(lm_inputs))
    expected_tokens, expected_step_logits = reference.greedy(expected_logits[:, -1], STEPS)
    report, logits, produced = run_engine(model, inputs, position_ids=lm_inputs.position_ids, **knobs)
    assert_engine_matches_reference(
        report, reference, inputs["attention_mask"].bool(), logits, expected_logits, produced, expected_tokens,
        expected_step_logits, STEPS,
    )


@pytest.mark.parametrize("family,kind", FAMILY_PROMPTS)
@pytest.mark.parametrize("method,score", [("dash_block", "delta_block"), ("dash_highest", "highest"), ("random", "random")])
def test_ablation_matches_masking_reference(family, kind, method, score):
    model, inputs = vl_case(family, kind)
    reference = MaskingReference(model, 0.75, 2, eligible_tokens(model, inputs, "all", "halted"), score=score)
    check_against(reference, model, inputs, method=method, ratio=0.75, start_layer=2)


def test_random_halts_the_same_tokens_of_a_prompt_alone_and_in_differently_composed_batches():
    """A 23-token prompt alone, then in a left-padded batch of 2 and another of 4 (longer and shorter
    prompts around it, so it sits in another row under other padding): the same tokens are halted,
    counted from its first token; a different seed halts others."""
    model = text_model("qwen2")
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, SIZES["vocab_size"], (length,), generator=generator) for length in (23, 31, 9, 40)]

    def kept_of_first_prompt(order: list[int], seed: int = 0) -> list[int]:
        width = max(prompts[i].numel() for i in order)
        ids = torch.zeros(len(order), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(order):
            ids[row, width - prompts[i].numel():], mask[row, width - prompts[i].numel():] = prompts[i], 1
        with Halting(model, method="random", ratio=0.5, start_layer=2, seed=seed) as halting, torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        row = order.index(0)
        return [t - (width - prompts[0].numel()) for t in halting.last_report.kept_positions[row]]

    alone = kept_of_first_prompt([0])
    assert kept_of_first_prompt([1, 0]) == alone
    assert kept_of_first_prompt([2, 3, 0, 1]) == alone
    assert kept_of_first_prompt([0], seed=1) != alone


# --- FastV ------------------------------------------------------------------------------------


def fastv_kept(model, inputs, ratio: float, layer: int) -> torch.Tensor:
    """Official rule on HF's eager attention maps: head-mean attention from the last token in layer
    ``layer - 1``; keep the top round(N (1 - ratio)) visual tokens, every other token."""
    eager = model_of(next(f for f in ALL_FAMILY_NAMES if model_of(f, "sdpa") is model), "eager")
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    received = attentions[layer - 1].mean(dim=1)[:, -1, :]
    visual = eligible_tokens(model, inputs, "visual", "halted")
    kept = inputs["attention_mask"].bool() & ~visual
    for b in range(kept.shape[0]):
        candidates = visual[b].nonzero().flatten()
        top = received[b, candidates].topk(round(candidates.numel() * (1 - ratio))).indices
        kept[b, candidates[top]] = True
    return kept


@pytest.mark.parametrize("family,kind", FAMILY_PROMPTS)
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_fastv_matches_eager_attention_reference(family, kind, ratio):
    model, inputs = vl_case(family, kind)
    kept = fastv_kept(model, inputs, ratio, layer=2)
    reference = MaskingReference(model, ratio, 2, kept, given_active=kept)
    check_against(reference, model, inputs, method="fastv", ratio=ratio)


# --- DART -------------------------------------------------------------------------------------


def dart_kept(model, inputs, ratio: float, layer: int, pivots: int = 4, order: str = "official") -> torch.Tensor:
    """Official rule, written out with Python sets: pivots by L1 norm of layer ``layer - 1``'s keys
    (visual; text after the last visual token), then per pivot the floor(N (1 - ratio) / P) remaining
    visual tokens least cosine-similar to it (P pivots found). ``order="official"``: the pivots in the
    order of ``list(set(image_pivots + text_pivots))`` over their positions in the unpadded prompt
    (ZichenWen1/DART ``modeling_qwen2_vl_self.py`` lines 425 and 430); ``"prompt"``: sorted."""
    lm_inputs = capture_language_model_inputs(model, inputs)  # generate's positions: L1 norms of rotated keys depend on them
    with torch.no_grad():
        output = language_model_of(model)(
            inputs_embeds=lm_inputs.embeds, position_ids=lm_inputs.position_ids, attention_mask=inputs["attention_mask"],
            use_cache=True, output_hidden_states=True, **lm_inputs.deepstack_kwargs,
        )
    keys = output_cache(output).layers[layer - 1].keys.transpose(1, 2).flatten(2)
    entering = with_deepstack(lm_inputs, layer - 1, output.hidden_states[layer])  # HF records layer outputs before DeepStack
    states = language_model_of(model).norm(entering).detach()
    valid = inputs["attention_mask"].bool()
    visual = eligible_tokens(model, inputs, "visual", "halted")
    kept = valid & ~visual
    for b in range(valid.shape[0]):
        pad = int((~valid[b]).sum())  # left padding: position t of the batch is t - pad of the prompt alone
        image = visual[b].nonzero().flatten().tolist()
        text = [t for t in range(max(image) + 1, valid.shape[1]) if valid[b, t]]
        l1 = {t: float(keys[b, t].abs().sum()) for t in image + text}
        image_pivots = sorted(image, key=lambda t: -l1[t])[:pivots]
        text_pivots = sorted(text, key=lambda t: -l1[t])[:pivots]
        budget = math.floor(len(image) * (1 - ratio) / len(image_pivots + text_pivots))
        if order == "official":
            walk = [t + pad for t in list(set([t - pad for t in image_pivots] + [t - pad for t in text_pivots]))]
        else:
            walk = sorted(image_pivots + text_pivots)
        chosen, pool = set(image_pivots), [t for t in image if t not in image_pivots]
        for pivot in walk:
            similarity = {t: float(torch.cosine_similarity(states[b, pivot], states[b, t], dim=0)) for t in pool}
            picks = sorted(pool, key=lambda t: similarity[t])[:budget]
            chosen.update(picks)
            pool = [t for t in pool if t not in picks]
        kept[b, sorted(chosen)] = True
    return kept


@pytest.mark.parametrize("family,kind", FAMILY_PROMPTS)
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_dart_matches_reference_rule(family, kind, ratio):
    model, inputs = vl_case(family, kind)
    kept = dart_kept(model, inputs, ratio, layer=2)
    reference = MaskingReference(model, ratio, 2, kept, given_active=kept)
    check_against(reference, model, inputs, method="dart", ratio=ratio)


def test_dart_walks_pivots_in_the_official_set_order_where_prompt_order_differs(many_visual_tokens):
    """Four images (256 visual tokens, 32 per pivot at ρ = 0.5): the set order of the official code and
    prompt order keep different tokens; ``dart`` keeps the official ones, ``dart_prompt_order`` the other."""
    model = model_of("qwen2_vl", "sdpa")
    official = dart_kept(model, many_visual_tokens, 0.5, layer=2)
    prompt_order = dart_kept(model, many_visual_tokens, 0.5, layer=2, order="prompt")
    assert not torch.equal(official, prompt_order)
    for method, kept in (("dart", official), ("dart_prompt_order", prompt_order)):
        report, _, _ = run_engine(model, many_visual_tokens, method=method, ratio=0.5)
        assert report.kept_positions[0] == kept[0].nonzero().flatten().tolist()


# --- counts at extreme ratios ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_visual_tokens():
    """One Qwen2-VL prompt with four 224 x 224 images: 256 visual tokens."""
    return four_image_prompt()


@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.96, 0.99])
@pytest.mark.parametrize(
    "method,expected",
    [
        ("dash", lambda n, e, r: n - math.floor(r * e + 1e-9)),
        ("fastv", lambda n, e, r: n - e + round(e * (1 - r))),
        ("dart", lambda n, e, r: n - e + min(e, 4 + 8 * int(e * (1 - r) / 8))),
        ("visionzip", lambda n, e, r: n - e + 4 * round(e / 4 * (1 - r))),  # one unit per image
        ("vispruner", lambda n, e, r: n - e + 4 * round(e / 4 * (1 - r))),
        ("divprune", lambda n, e, r: n - e + round(e * (1 - r))),
        ("cdpruner", lambda n, e, r: n - e + round(e * (1 - r))),
    ],
)
def test_kept_counts_follow_the_documented_formula(many_visual_tokens, method, expected, ratio):
    model = model_of("qwen2_vl", "sdpa")
    report, _, produced = run_engine(model, many_visual_tokens, method=method, ratio=ratio)
    prompt, eligible = report.prompt_tokens[0], report.eligible_tokens[0]
    assert eligible == (256 if method != "dash" else prompt - 1)
    assert report.kept_tokens_per_layer[-1][0] == expected(prompt, eligible, ratio)
    assert produced.sequences.shape[1] == many_visual_tokens["input_ids"].shape[1] + STEPS


def test_fastv_budget_that_rounds_to_zero_is_a_clear_error():
    model, inputs = vl_case("qwen2_vl", "image")  # 16 and 40 visual tokens
    with Halting(model, method="fastv", ratio=0.99), pytest.raises(ValueError, match="keeps round"):
        model(**inputs)


@pytest.mark.parametrize(
    "method", ["fastv", "dart", "dart_prompt_order", "dash_block", "random", "visionzip", "vispruner", "divprune", "cdpruner"]
)
def test_ratio_zero_matches_unmodified_model_for_every_method(method):
    model, inputs = vl_case("llava_onevision", "image")
    with torch.no_grad():
        expected = model(**inputs).logits
    _, logits, _ = run_engine(model, inputs, method=method, ratio=0.0)
    valid = inputs["attention_mask"].bool()
    assert torch.equal(logits[valid], expected[valid])


def test_visual_baselines_default_to_visual_scope_and_layer_two():
    model, inputs = vl_case("internvl", "image")
    report, _, _ = run_engine(model, inputs, method="dart", ratio=0.5)
    assert report.start_layer == 2
    assert report.eligible_tokens == eligible_tokens(model, inputs, "visual", "halted").sum(dim=1).tolist()

"""Calibration: proxies against the unmodified model, the pick within budget, the command line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig

from dash_vl import Halting, HaltingConfig
from dash_vl.calibrate import CalibrationPrompt, QualityBudget, calibrate, compare
from dash_vl.cli import main
from tests.conftest import processor_of

CONTINUATION = 8


@pytest.fixture(scope="module")
def tokenizer():
    return processor_of("qwen2_vl").tokenizer


@pytest.fixture(scope="module")
def llama(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def prompts():
    generator = torch.Generator().manual_seed(0)
    return [CalibrationPrompt(tuple(torch.randint(3, 250, (n,), generator=generator).tolist()), CONTINUATION) for n in (40, 57)]


@pytest.fixture(scope="module")
def result(llama, prompts):
    return calibrate(llama, prompts, QualityBudget(max_kl=1.0), "dash", (1, 3), (0.0, 0.5), progress=False)


def test_ratio_zero_is_the_unmodified_model(result):
    unmodified = [point for point in result.points if point.ratio == 0.0]
    assert [point.decision_layers for point in unmodified] == [(1,), (3,)]
    for point in unmodified:
        assert point.kl == pytest.approx(0.0, abs=1e-6)
        assert point.perplexity_increase == pytest.approx(0.0, abs=1e-5)
        assert point.relative_flops == 1.0 and point.ideal_speedup == 1.0


def test_halting_moves_the_proxies_and_saves_flops(result):
    halted = [point for point in result.points if point.ratio == 0.5]
    assert all(point.kl > 1e-4 and point.relative_flops < 1.0 for point in halted)
    assert halted[0].ideal_speedup == pytest.approx(5 / (1 + 4 * 0.5))


def test_pick_is_the_fastest_point_within_budget(llama, prompts, result):
    assert result.pick == max(result.points, key=lambda point: point.ideal_speedup)
    assert "<-" in next(line for line in result.table().splitlines() if line.startswith("     1  0.50"))
    tight = calibrate(llama, prompts, QualityBudget(max_kl=1e-9), "dash", (1, 3), (0.0, 0.5), progress=False)
    assert tight.pick.ratio == 0.0
    none_fit = calibrate(llama, prompts, QualityBudget(max_kl=1e-9), "dash", (1,), (0.5,), progress=False)
    assert none_fit.pick is None and "no grid point" in none_fit.summary()


@pytest.mark.parametrize(
    "knobs,num_layers,expected",
    [
        (dict(method="dash", ratio=0.5, start_layer=1), 5, 5 / (1 + 4 * (1.0 - 0.5))),
        (dict(method="dash", ratio=0.7), 28, 28 / (11 + 17 * (1.0 - 0.7))),
        (dict(method="fastv", ratio=0.9), 32, 32 / (2 + 30 * (1.0 - 0.9))),
        (dict(method="snapkv", ratio=0.29, start_layer=0.5), 24, 24 / (12 + 12 * (1.0 - 0.29))),
        (dict(method="dash", ratio=0.0), 24, 1.0),
    ],
)
def test_ideal_speedup_of_one_decision_is_layers_over_tokens_run(knobs, num_layers, expected):
    assert HaltingConfig(**knobs).ideal_speedup(num_layers) == expected


def test_ideal_speedup_of_stages_counts_the_tokens_each_stage_keeps():
    # layer 0 on all tokens, layers 1-2 on 1/2, layer 3 on 1/4, layer 4 on 1/8: 2.375 token-layers of 5
    multi = HaltingConfig(method="dash_multi", ratio=0.5, start_layer=1, stage_layers=(3, 4))
    assert multi.ideal_speedup(5) == pytest.approx(5 / 2.375)
    # PyramidDrop's official schedule, layers 8, 16, 24 of 32, λ = 0.5: 8 layers each at 1, 1/2, 1/4, 1/8
    assert HaltingConfig(method="pyramiddrop", ratio=0.5).ideal_speedup(32) == pytest.approx(32 / 15)


@pytest.fixture(scope="module")
def staged(llama, prompts):
    return calibrate(
        llama, prompts, QualityBudget(max_kl=1.0), "dash_multi", (1, 0.3, 2), (0.0, 0.5), stage_layers=(3, 4),
        progress=False,
    )


def test_multi_stage_points_are_whole_schedules(staged):
    assert [(point.decision_layers, point.ratio) for point in staged.points] == [
        ((1, 3, 4), 0.0), ((1, 3, 4), 0.5), ((2, 3, 4), 0.0), ((2, 3, 4), 0.5),
    ]
    assert staged.points[1].ideal_speedup == pytest.approx(5 / 2.375)
    assert [line.split()[0] for line in staged.table().splitlines()[1:]] == ["1,3,4", "1,3,4", "2,3,4", "2,3,4"]


def test_multi_stage_pick_knobs_reproduce_its_flops(llama, prompts, staged):
    pick = staged.pick
    assert pick.knobs() == {"start_layer": 1, "stage_layers": (3, 4), "ratio": 0.5}
    assert "dash_multi: start_layer=1 stage_layers=(3, 4) ratio=0.5" in staged.summary()
    flops = []
    with Halting(llama, method=staged.method, question="protected", **pick.knobs()) as halting:
        for prompt in prompts:
            with halting.question_length(prompt.continuation), torch.no_grad():
                llama(input_ids=torch.tensor([prompt.ids]))
            assert halting.last_report.decision_layers == [1, 3, 4]
            flops.append(halting.last_report.relative_flops)
    assert sum(flops) / len(flops) == pytest.approx(pick.relative_flops)


@pytest.mark.parametrize(
    "method,start_layers,stage_layers,message",
    [
        ("dash_multi", (1, 3), (3, 4), "start layer 3 gives method 'dash_multi' no decision schedule"),
        ("dash_multi", (0.8,), None, "every start layer must lie before the first of stage_layers"),
        ("pyramiddrop", (1,), None, "halts only visual tokens"),
    ],
)
def test_schedules_that_cannot_be_calibrated_are_clear_errors(llama, prompts, method, start_layers, stage_layers,
                                                               message):
    with pytest.raises(ValueError, match=message):
        calibrate(llama, prompts, QualityBudget(), method, start_layers, (0.5,), stage_layers, progress=False)


def test_compare_is_the_nll_difference_and_kl():
    generator = torch.Generator().manual_seed(1)
    reference = F.log_softmax(torch.randn(6, 11, generator=generator), dim=-1)
    halted = F.log_softmax(torch.randn(6, 11, generator=generator), dim=-1)
    targets = torch.randint(0, 11, (6,), generator=generator)
    nll_difference, kl = compare(reference, halted, targets)
    expected_nll = F.nll_loss(halted, targets, reduction="none") - F.nll_loss(reference, targets, reduction="none")
    torch.testing.assert_close(nll_difference, expected_nll)
    torch.testing.assert_close(kl, F.kl_div(halted, reference, log_target=True, reduction="none").sum(-1))


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: QualityBudget(None, None), "needs max_perplexity_increase"),
        (lambda: QualityBudget(-0.1), "max_perplexity_increase must be >= 0"),
        (lambda: CalibrationPrompt((1, 2, 3), 1), "continuation must be in"),
        (lambda: CalibrationPrompt((1, 2, 3), 3), "continuation must be in"),
    ],
)
def test_bad_settings_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_no_prompts_is_an_error(llama):
    with pytest.raises(ValueError, match="at least one prompt"):
        calibrate(llama, [], QualityBudget())


def test_calibrate_command_prints_table_and_pick(llama, tokenizer, tmp_path, capsys):
    llama.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    text = tmp_path / "prompt.txt"
    text.write_text("The pass key is 31415. " * 6)
    code = main([
        "calibrate", str(tmp_path / "model"), "--text", str(text), "--continuation", "12",
        "--start-layers", "2", "--ratios", "0.0", "0.5", "--max-kl", "1000",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "pick: dash: start_layer=2 stage_layers=() ratio=0.5" in out
    assert len([line for line in out.splitlines() if line.startswith("     2  ")]) == 2
    assert main([
        "calibrate", str(tmp_path / "model"), "--text", str(text), "--continuation", "12",
        "--start-layers", "2", "--stage-layers", "3/4", "--ratios", "0.5", "--max-kl", "1000",
    ]) == 0
    out = capsys.readouterr().out
    assert "pick: dash: start_layer=2 stage_layers=(3, 4) ratio=0.5" in out
    assert out.splitlines()[1].startswith(" 2,3,4  0.50")


def test_calibrate_command_reports_bad_budget(tmp_path, capsys):
    assert main(["calibrate", "smollm2", "--max-kl", "-1"]) == 2
    assert "max_kl must be >= 0" in capsys.readouterr().err


def test_calibrates_a_vision_language_model_on_text_prompts(prompts):
    from tests.conftest import model_of

    result = calibrate(model_of("qwen2_vl", "sdpa"), prompts, QualityBudget(max_kl=1e-9), "dash", (1,), (0.0, 0.5),
                       progress=False)
    assert result.points[0].kl == pytest.approx(0.0, abs=1e-6)
    assert result.points[1].kl > 1e-4 and result.pick.ratio == 0.0

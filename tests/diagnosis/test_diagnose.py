"""dash_vl.diagnose and ``dash-vl diagnose`` on tiny random models: the traced numbers equal what HF
computes, the statistics answer their questions on hand-made traces, the files hold what the docs say."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen3Config

import dash_vl
from dash_vl.adapters import adapter_for
from dash_vl.cli import build_parser, main
from dash_vl.diagnosis.attention_received import attention_received
from dash_vl.diagnosis.config import DiagnosisConfig
from dash_vl.diagnosis.files import CSV_COLUMNS, read_diagnosis, write_diagnosis
from dash_vl.diagnosis.layer_trace import LayerTrace, trace_prompt, tracing
from dash_vl.diagnosis.prompts import passkey_samples
from dash_vl.diagnosis.run import Diagnosis
from dash_vl.diagnosis.stats import ATTENTION_VIEWS, attention_view, redundancy, sinks
from tests.conftest import model_of, processor_of, random_image, vl_inputs


def diagnose_parser():
    """The ``dash-vl diagnose`` subparser."""
    commands = next(action for action in build_parser()._actions if action.dest == "command")
    return commands.choices["diagnose"]


SIZES = dict(
    vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
)
TEXT_CONFIGS = {"llama": LlamaConfig, "qwen3": Qwen3Config}  # qwen3: per-head q_norm / k_norm


def text_model(family: str, attn_implementation: str = "sdpa"):
    torch.manual_seed(0)
    config = TEXT_CONFIGS[family](**SIZES)
    config._attn_implementation = attn_implementation
    return AutoModelForCausalLM.from_config(config).eval()


def text_prompt(seed: int = 0, length: int = 48) -> dict:
    return {"input_ids": torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(seed))}


def eager_model_and_prompt(family: str):
    if family in TEXT_CONFIGS:
        return text_model(family, "eager"), text_prompt()
    return model_of(family, "eager"), vl_inputs(processor_of(family), 1)


@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen2_vl", "internvl", "qwen3_vl"])  # qwen3_vl: DeepStack
def test_attention_received_equals_hf_eager_attention_maps(family):
    model, prompt = eager_model_and_prompt(family)
    with torch.no_grad():
        maps = model(**prompt, output_attentions=True).attentions
    expected = torch.stack([layer_map[0].sum(dim=1).mean(dim=0) for layer_map in maps])
    traced = trace_prompt(adapter_for(model), prompt, chunk=7).received
    torch.testing.assert_close(traced, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2_vl"])
def test_last_query_attention_equals_the_last_row_of_hf_eager_attention_maps(family):
    model, prompt = eager_model_and_prompt(family)
    with torch.no_grad():
        maps = model(**prompt, output_attentions=True).attentions
    expected = torch.stack([layer_map[0, :, -1].mean(dim=0) for layer_map in maps])
    torch.testing.assert_close(trace_prompt(adapter_for(model), prompt).last_query, expected, atol=1e-5, rtol=1e-4)


def test_attention_received_does_not_depend_on_the_chunk():
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(6, 33, 8, generator=generator), torch.randn(2, 33, 8, generator=generator)
    torch.testing.assert_close(attention_received(queries, keys, chunk=1), attention_received(queries, keys, chunk=100))


def test_attention_received_sums_to_the_number_of_queries():
    generator = torch.Generator().manual_seed(1)
    received = attention_received(torch.randn(4, 20, 8, generator=generator), torch.randn(4, 20, 8, generator=generator), 3)
    assert received.sum().item() == pytest.approx(20.0, rel=1e-5)


def test_delta_attn_equals_a_hook_on_the_attention_output():
    model = text_model("llama")
    norms = []
    hooks = [
        layer.self_attn.register_forward_hook(lambda module, args, output: norms.append(output[0][0].norm(dim=-1)))
        for layer in model.model.layers
    ]
    with torch.no_grad():
        model(**text_prompt())
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(trace_prompt(adapter_for(model), text_prompt()).delta_attn, torch.stack(norms))


def test_hidden_norm_equals_the_hidden_states_entering_each_layer():
    model = text_model("qwen3")
    with torch.no_grad():
        states = model(**text_prompt(), output_hidden_states=True).hidden_states[:-1]
    expected = torch.stack([state[0].norm(dim=-1) for state in states])
    torch.testing.assert_close(trace_prompt(adapter_for(model), text_prompt()).hidden_norm, expected)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_tracing_leaves_the_model_output_unchanged(family):
    model = model_of(family, "sdpa")
    prompt = vl_inputs(processor_of(family), 1)
    with torch.no_grad():
        expected = model(**prompt).logits
        with tracing(adapter_for(model), chunk=16):
            traced = model(**prompt).logits
    torch.testing.assert_close(traced, expected)


def test_the_model_forward_is_restored_after_a_diagnosis():
    model = text_model("llama")
    dash_vl.diagnose(model, [text_prompt()], DiagnosisConfig(start_layers=(1,)), progress=False)
    assert "forward" not in vars(model.model)


def test_visual_tokens_are_compared_with_text_tokens_on_a_vlm():
    model = model_of("llava_onevision", "sdpa")
    result = dash_vl.diagnose(model, [vl_inputs(processor_of("llava_onevision"), 1)], DiagnosisConfig(start_layers=(2,)), progress=False)
    assert len(result.modality) == len(model.model.language_model.layers)


def test_a_text_model_has_no_modality_comparison():
    result = dash_vl.diagnose(text_model("llama"), [text_prompt()], DiagnosisConfig(start_layers=(1,)), progress=False)
    assert result.modality is None


def synthetic_trace(delta_attn: torch.Tensor, received: torch.Tensor, hidden_norm: torch.Tensor | None = None) -> LayerTrace:
    """A trace of 3 layers over ``T`` tokens with ``delta_attn`` and ``received`` ``(T,)`` in every layer."""
    layers = 3
    norms = torch.ones(layers, delta_attn.numel()) if hidden_norm is None else hidden_norm.expand(layers, -1)
    last_query = (received / received.sum()).expand(layers, -1)
    return LayerTrace(delta_attn.expand(layers, -1), norms, received.expand(layers, -1), last_query, None, None)


def test_redundancy_holds_where_low_delta_attn_tokens_receive_little_attention():
    rank = torch.arange(40, dtype=torch.float32)
    result = redundancy([synthetic_trace(rank, rank + 1)], 1, "all", 0.5, 10, 5, 0.1, 0)
    assert result.holds["all_queries"] and result.share_ratio["all_queries"] < 0.6


def test_redundancy_fails_where_low_delta_attn_tokens_receive_the_most_attention():
    rank = torch.arange(40, dtype=torch.float32)
    result = redundancy([synthetic_trace(rank, 40 - rank)], 1, "all", 0.5, 10, 5, 0.1, 0)
    assert not result.holds["all_queries"] and result.share_ratio["all_queries"] > 1.3


def test_the_bootstrap_over_prompts_decides_only_with_several_prompts_that_agree():
    rank = torch.arange(40, dtype=torch.float32)
    one = redundancy([synthetic_trace(rank, rank + 1)], 1, "all", 0.5, 10, 5, 0.1, 0)
    assert one.holds["all_queries"] and one.interval_verdict["all_queries"] == "undecided"
    agreeing = [synthetic_trace(rank, rank + 1 + shift) for shift in (0.0, 2.0, 5.0, 9.0)]
    several = redundancy(agreeing, 1, "all", 0.5, 10, 5, 0.1, 0)
    low, high = several.share_ratio_interval["all_queries"]
    assert low <= several.share_ratio["all_queries"] <= high < 0.9
    assert several.interval_verdict["all_queries"] == "holds"
    inverted = [synthetic_trace(rank, 40 - rank + shift) for shift in (0.0, 2.0, 5.0, 9.0)]
    assert redundancy(inverted, 1, "all", 0.5, 10, 5, 0.1, 0).interval_verdict["all_queries"] == "fails"
    mixed = agreeing[:2] + inverted[:2]
    assert redundancy(mixed, 1, "all", 0.5, 10, 5, 0.1, 0).interval_verdict["all_queries"] == "undecided"


def test_a_massive_norm_token_is_a_sink_that_dash_halts_when_its_update_is_small():
    delta_attn = torch.arange(20, dtype=torch.float32)
    hidden_norm = torch.ones(20)
    hidden_norm[0] = 50.0
    found = sinks([synthetic_trace(delta_attn, torch.ones(20), hidden_norm)], [1], "all", 0.5, 10.0, 0.5)
    assert [(sink.position, sink.decisions[0].rank, sink.decisions[0].halted) for sink in found] == [(0, 0, True)]


def test_verdict_names_the_decision_layers_where_the_premise_holds():
    result = dash_vl.diagnose(text_model("llama"), [text_prompt()], DiagnosisConfig(start_layers=(1, 2)), progress=False)
    held = {view: [entry.start_layer for entry in result.redundancy if entry.holds[view]] for view in ATTENTION_VIEWS}
    assert f"at l_s {held['all_queries']} of [1, 2] counting all queries" in result.verdict
    assert f"at l_s {held['last_query']} counting the last token's attention" in result.verdict
    first = result.redundancy[0]
    low, high = first.share_ratio_interval["all_queries"]
    assert (
        f"1: all_queries {first.share_ratio['all_queries']:.2f} [{low:.2f}, {high:.2f}] "
        f"{first.interval_verdict['all_queries']}" in result.verdict
    )


def documented_json_fields() -> set[str]:
    """The top-level fields ``docs/diagnose.md`` lists under "JSON fields"."""
    section = (Path(__file__).parents[2] / "docs" / "diagnose.md").read_text().split("### JSON fields")[1].split("\n#")[0]
    return set(re.findall(r"^- `(\w+)`", section, flags=re.MULTILINE))


def test_the_docs_list_every_diagnosis_field():
    assert documented_json_fields() == set(Diagnosis.__dataclass_fields__)


def test_json_and_csv_hold_every_documented_field(tmp_path):
    result = dash_vl.diagnose(
        model_of("qwen2_vl", "sdpa"), [vl_inputs(processor_of("qwen2_vl"), 1)], DiagnosisConfig(start_layers=(2, 3)),
        progress=False,
    )
    paths = write_diagnosis(result, tmp_path, "tiny", plots=False)
    written = json.loads(paths[0].read_text())
    assert set(written) == documented_json_fields()
    assert [entry["start_layer"] for entry in written["redundancy"]] == [2, 3]
    assert set(written["redundancy"][0]) == {
        "start_layer", "halted", "share_ratio", "lowest_group_relative", "holds", "layers", "share_ratio_interval",
        "interval_verdict",
    }
    assert set(written["redundancy"][0]["share_ratio"]) == set(ATTENTION_VIEWS)
    assert set(written["redundancy"][0]["layers"][0]) == {"layer", "decile_relative", "random_low", "random_high", "halted"}
    assert set(written["redundancy"][0]["layers"][0]["halted"]["last_query"]) == {"dash", "random"}
    assert set(written["environment"]) == {"dash_vl", "torch", "transformers", "date"}
    header = paths[1].read_text().splitlines()[0]
    assert tuple(header.split(",")) == CSV_COLUMNS


def test_a_written_diagnosis_reads_back_equal(tmp_path):
    prompt = text_prompt(length=64)
    prompt["input_ids"][0, 0] = 2
    result = dash_vl.diagnose(
        text_model("llama"), [prompt], DiagnosisConfig(start_layers=(1, 2), sink_attention_share=0.05), progress=False
    )
    assert result.sinks
    assert read_diagnosis(write_diagnosis(result, tmp_path, "again", plots=False)[0]) == result


@pytest.mark.parametrize(
    "field, value",
    [("ratio", 1.0), ("ratio", 0), ("start_layers", (0,)), ("start_layers", ()), ("groups", 1), ("margin", 1.0),
     ("small_fraction", 0.0), ("sink_norm_factor", 1.0), ("chunk", 0), ("scope", "text"), ("random_groupings", 0)],
)
def test_config_rejects_a_bad_value_naming_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        DiagnosisConfig(**{field: value})


def test_a_decision_layer_without_a_later_layer_is_refused():
    with pytest.raises(ValueError, match="start_layers must leave a later layer"):
        dash_vl.diagnose(text_model("llama"), [text_prompt()], DiagnosisConfig(start_layers=(3,)), progress=False)


def test_a_batched_prompt_is_refused():
    with pytest.raises(ValueError, match="one prompt at a time"):
        dash_vl.diagnose(text_model("llama"), [{"input_ids": torch.randint(3, 97, (2, 10))}], progress=False)


def test_a_padded_prompt_is_refused():
    prompt = dict(text_prompt(), attention_mask=torch.ones(1, 48, dtype=torch.long))
    prompt["attention_mask"][0, 0] = 0
    with pytest.raises(ValueError, match="padding"):
        dash_vl.diagnose(text_model("llama"), [prompt], DiagnosisConfig(start_layers=(1,)), progress=False)


def test_a_prompt_longer_than_a_sliding_window_is_refused():
    config = MistralConfig(**SIZES, sliding_window=16)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ValueError, match="sliding window"):
        dash_vl.diagnose(model, [text_prompt(length=48)], DiagnosisConfig(start_layers=(1,)), progress=False)
    dash_vl.diagnose(model, [text_prompt(length=16)], DiagnosisConfig(start_layers=(1,)), progress=False)


def test_no_prompts_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        dash_vl.diagnose(text_model("llama"), [], progress=False)


def test_visual_scope_on_a_text_model_is_refused():
    with pytest.raises(ValueError, match="text-only"):
        dash_vl.diagnose(text_model("llama"), [text_prompt()], DiagnosisConfig(scope="visual"), progress=False)


@pytest.fixture(scope="module")
def saved_vlm(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-qwen2_vl")
    assert main(["make-random-model", str(directory), "--layers", "5"]) == 0
    return directory


def test_cli_diagnoses_an_image_prompt_and_writes_its_files(saved_vlm, tmp_path, capsys):
    image = tmp_path / "noise.png"
    random_image(0, (112, 84)).save(image)
    code = main([
        "diagnose", str(saved_vlm), "--image", str(image), "-q", "What is it?", "--start-layers", "1", "2",
        "--output", str(tmp_path / "out"), "--stem", "tiny",
    ])
    assert code == 0
    assert "stability implies redundancy at l_s" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "tiny.csv", "tiny.json", "tiny_convergence.png", "tiny_redundancy.png"
    ]


def test_cli_diagnoses_text_files(saved_vlm, tmp_path):
    text = tmp_path / "prompt.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 4)
    code = main(["diagnose", str(saved_vlm), "--text", str(text), "--start-layers", "2", "--output", str(tmp_path), "--no-plots"])
    assert code == 0
    assert json.loads((tmp_path / f"diagnose_{saved_vlm.name}.json").read_text())["modality"] is None


def test_cli_refuses_an_image_without_a_question(saved_vlm, tmp_path, capsys):
    assert main(["diagnose", str(saved_vlm), "--image", "x.png", "--output", str(tmp_path)]) == 2
    assert "--image needs --query" in capsys.readouterr().err


def test_cli_offers_every_diagnosis_knob_with_its_default():
    """Each :class:`DiagnosisConfig` field is a ``dash-vl diagnose`` option whose default is the field's, so
    a knob added to the config reaches the CLI and none is dropped on the way to the run."""
    action_of = {action.dest: action for action in diagnose_parser()._actions}
    for knob in dataclasses.fields(DiagnosisConfig):
        assert knob.name in action_of, f"dash-vl diagnose has no option for DiagnosisConfig.{knob.name}"
        default = action_of[knob.name].default
        assert (tuple(default) if isinstance(default, list) else default) == knob.default, knob.name


def test_cli_passes_every_knob_to_the_run(saved_vlm, tmp_path, monkeypatch):
    """Non-default values of every knob reach the :class:`DiagnosisConfig` the run gets."""
    given = dict(
        start_layers=("2", "0.5"), ratio="0.25", scope="visual", small_fraction="0.1", groups="4", random_groupings="3",
        margin="0.2", sink_norm_factor="5.0", sink_attention_share="0.3", chunk="16", seed="7",
    )
    args = ["diagnose", str(saved_vlm), "--output", str(tmp_path), "--no-plots", "--prompts", "1"]
    for name, value in given.items():
        args += ["--" + name.replace("_", "-"), *((value,) if isinstance(value, str) else value)]
    received = []

    def stop(model, prompts, config, **kwargs):
        received.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr("dash_vl.diagnosis.run.diagnose", stop)
    assert main(args) == 130
    assert received == [DiagnosisConfig(
        start_layers=(2, 0.5), ratio=0.25, scope="visual", small_fraction=0.1, groups=4, random_groupings=3, margin=0.2,
        sink_norm_factor=5.0, sink_attention_share=0.3, chunk=16, seed=7,
    )]


def test_cli_refuses_a_bad_knob_before_the_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dash_vl.cli.load_for_diagnosis", lambda *args: pytest.fail("the model was loaded"))
    assert main(["diagnose", "scenes", "--groups", "1", "--output", str(tmp_path)]) == 2
    assert "groups must be an int in [2, inf], got 1" in capsys.readouterr().err


def test_the_per_visible_query_view_divides_by_the_queries_that_see_each_token():
    trace = synthetic_trace(torch.zeros(4), torch.tensor([4.0, 3.0, 2.0, 1.0]))
    assert attention_view(trace, 0, "per_visible_query").tolist() == [1.0, 1.0, 1.0, 1.0]


def test_builtin_passkey_prompts_cycle_the_key_depths():
    samples = passkey_samples(processor_of("qwen2_vl").tokenizer, 7, 128)
    assert [sample.depth for sample in samples] == [0.0, 0.25, 0.5, 0.75, 1.0, 0.0, 0.25]

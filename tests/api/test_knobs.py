"""One knob table: every field of HaltingConfig is settable, with its documentation, at every door (CLI flags,
lmms-eval model_args, load(...), Halting(...)), and a field without documentation is refused."""

from __future__ import annotations

import dataclasses

import pytest

from dash_vl import knobs
from dash_vl.cli import build_parser
from dash_vl.config import HaltingConfig

EXAMPLE = dict(
    method="random", ratio=0.5, start_layer=2, stage_layers=(3,), observation_window=32, scope="visual", question="protected", seed=3, packing="ragged",
    vision_ratio=0.25, vision_start_layer=1, vision_rule="random", compiled_decode=False,
)
"""A value other than the default for every knob, valid together."""


def as_text(value: object) -> str:
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return "none" if value is None else str(value)


def test_example_sets_every_field_to_something_else_than_its_default():
    fields = {field.name: field.default for field in dataclasses.fields(HaltingConfig)}
    assert set(EXAMPLE) == set(fields), "a new HaltingConfig field needs a value here"
    assert all(EXAMPLE[name] != default for name, default in fields.items())
    assert knobs.KNOB_NAMES == tuple(fields)


def test_every_field_is_a_cli_flag_of_ask():
    flags = [text for name, value in EXAMPLE.items() for text in ("--" + name.replace("_", "-"), as_text(value))]
    args = build_parser().parse_args(["ask", "-q", "What?", *flags])
    assert knobs.config_from_arguments(args) == HaltingConfig(**EXAMPLE)
    assert knobs.config_from_arguments(build_parser().parse_args(["ask", "-q", "What?"])) == HaltingConfig()


def test_an_optional_knob_is_unset_with_none_on_the_command_line():
    args = build_parser().parse_args(["ask", "-q", "What?", "--scope", "none", "--start-layer", "none"])
    assert knobs.config_from_arguments(args) == HaltingConfig()


def test_every_field_is_an_lmms_eval_model_arg():
    pytest.importorskip("lmms_eval")
    from dash_vl.integrations.lmms_eval.models import halting_config

    as_lmms_eval_parses = {name: as_text(value) for name, value in EXAMPLE.items()}
    assert halting_config(as_lmms_eval_parses) == HaltingConfig(**EXAMPLE)
    assert halting_config({"vision_rule": "random", "vision_ratio": 0.5}).vision_rule == "random"


def test_every_field_is_a_keyword_of_load_and_halting(tmp_path):
    import dash_vl
    from dash_vl.cli import main

    assert main(["make-random-model", str(tmp_path), "--layers", "4"]) == 0
    vlm = dash_vl.load(tmp_path, **EXAMPLE)
    assert vlm.halting.config == HaltingConfig(**EXAMPLE)
    assert dash_vl.Halting(vlm.model, **EXAMPLE).config == HaltingConfig(**EXAMPLE)


def test_every_door_documents_every_knob():
    import dash_vl

    help_text = build_parser()._subparsers._group_actions[0].choices["ask"].format_help()
    doors = {"load": dash_vl.load.__doc__, "Halting": dash_vl.Halting.__doc__, "ask --help": help_text}
    try:
        from dash_vl.integrations.lmms_eval.models import HaltingModel
    except ImportError:
        pass
    else:
        doors["lmms-eval"] = HaltingModel.__doc__
    for door, text in doors.items():
        for knob in knobs.KNOBS:
            assert (knob.flag if door == "ask --help" else f"``{knob.name}``") in text, (door, knob.name)
    assert "{knobs}" not in dash_vl.load.__doc__
    assert "--vision-rule" in help_text and "(default: dash)" in " ".join(help_text.split())


def test_each_knob_has_its_docstring_paragraph_and_markup_is_removed():
    ratio = next(knob for knob in knobs.KNOBS if knob.name == "ratio")
    assert ratio.doc.startswith("ρ in [0, 1)") and "``" not in ratio.doc
    assert "the default, halts nothing" in ratio.help() and ratio.help().endswith("(default: 0.0)")
    assert all(knob.doc for knob in knobs.KNOBS)


def test_text_that_is_not_the_knobs_type_names_the_knob():
    with pytest.raises(ValueError, match="ratio must be a number, got 'half'"):
        knobs.from_text({"ratio": "half"})
    with pytest.raises(ValueError, match="start_layer must be an integer layer index or a fraction like 0.4 or 'none'"):
        knobs.from_text({"start_layer": "middle"})


def test_markdown_table_lists_every_knob_with_its_flag():
    table = knobs.markdown_table()
    assert all(f"| `{knob.name}` | `{knob.flag}` |" in table for knob in knobs.KNOBS)


def test_docs_knob_table_is_the_generated_one():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "knobs.md").read_text()
    assert knobs.markdown_table() in page, "regenerate docs/knobs.md from dash_vl.knobs.markdown_table()"


def test_a_field_without_a_docstring_paragraph_is_refused(monkeypatch):
    undocumented = HaltingConfig.__doc__.replace("        seed: seed of", "        seeds: seed of")
    monkeypatch.setattr(HaltingConfig, "__doc__", undocumented)
    with pytest.raises(TypeError, match="HaltingConfig.seed has no paragraph under 'Attributes:'"):
        knobs._knobs()

"""``eval/accuracy_code.py``'s refusals: several code sources need a results file each, so a ``--results``
path without ``{source}`` is refused before any model is loaded, as are prompt counts that are not one per
length; a source that cannot give the prompts asked for is a one-line error before anything is measured."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "eval"))
import accuracy_code  # noqa: E402

sys.path.pop(0)


@pytest.mark.parametrize("argv,message", [
    (["--source", "stdlib", "sympy", "--results", "r.jsonl"], "must contain '{source}'"),
    (["--lengths", "2048", "4096", "--per-cell", "28", "28", "13", "--results", "r.jsonl"],
     "--per-cell: prompt counts must be one positive count or one per length (2 lengths: 2048 4096), got (28, 28, 13)"),
    (["--per-cell", "0", "--results", "r.jsonl"], "one positive count"),
])
def test_bad_arguments_are_refused_before_a_model_is_loaded(monkeypatch, capsys, argv, message):
    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the arguments are checked")

    monkeypatch.setitem(accuracy_code.PACKAGED_MODELS, "qwen-coder", SimpleNamespace(checkpoint="Qwen", load=no_load))
    monkeypatch.setattr(sys, "argv", ["accuracy_code.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        accuracy_code.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_suite_the_source_cannot_fill_is_one_line_error_before_any_measurement(monkeypatch, capsys, tmp_path):
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=32768))
    loaded = SimpleNamespace(checkpoint="Qwen", load=lambda device, dtype: (model, object()))
    monkeypatch.setitem(accuracy_code.PACKAGED_MODELS, "qwen-coder", loaded)

    def too_few(*args, **kwargs):
        raise ValueError("no unused library file has a 16384-token head: ask for at most 13 prompts per cell")

    def no_sweep(*args, **kwargs):
        raise AssertionError("nothing may be measured when a source's prompts cannot be built")

    monkeypatch.setattr(accuracy_code, "code_suite", too_few)
    monkeypatch.setattr(accuracy_code, "sweep_source", no_sweep)
    results = str(tmp_path / "r_{source}.jsonl")
    monkeypatch.setattr(sys, "argv", ["accuracy_code.py", "--source", "stdlib", "sympy", "--results", results])
    with pytest.raises(SystemExit) as exit_info:
        accuracy_code.main()
    assert exit_info.value.code == 2
    assert "--source stdlib: no unused library file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("counts,stored", [(["13"], 13), (["52", "52", "39", "13"], (52, 52, 39, 13))])
def test_prompt_counts_reach_the_suite_and_the_results_header_as_given(monkeypatch, tmp_path, counts, stored):
    """One count stays an int (the header of files written before counts per length, so they still resume);
    several become a tuple, one per length."""
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=32768))
    monkeypatch.setitem(accuracy_code.PACKAGED_MODELS, "qwen-coder",
                        SimpleNamespace(checkpoint="Qwen", load=lambda device, dtype: (model, object())))
    seen = {}

    def suite(tokenizer, tasks, lengths, per_cell, seed, root):
        seen["suite"] = per_cell
        return []

    monkeypatch.setattr(accuracy_code, "code_suite", suite)
    monkeypatch.setattr(accuracy_code, "batches", lambda suite, tokenizer, size: iter(()))
    monkeypatch.setattr(accuracy_code, "sweep_source", lambda args, *rest: seen.setdefault("sweep", args.per_cell))
    monkeypatch.setattr(sys, "argv", ["accuracy_code.py", "--per-cell", *counts, "--results", str(tmp_path / "r.jsonl")])
    accuracy_code.main()
    assert seen == {"suite": stored, "sweep": stored}
    assert type(seen["sweep"]) is type(stored)

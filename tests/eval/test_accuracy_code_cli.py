"""``eval/accuracy_code.py`` on several code sources: each source needs a results file of its own, so a
``--results`` path without ``{source}`` is refused before any model is loaded."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "eval"))
import accuracy_code  # noqa: E402

sys.path.pop(0)


def test_several_sources_without_a_source_placeholder_are_refused(monkeypatch, capsys):
    def no_load(*args, **kwargs):
        raise AssertionError("the model must not be loaded before the arguments are checked")

    monkeypatch.setitem(accuracy_code.PACKAGED_MODELS, "qwen-coder", SimpleNamespace(checkpoint="Qwen", load=no_load))
    monkeypatch.setattr(sys, "argv", ["accuracy_code.py", "--source", "stdlib", "sympy", "--results", "r.jsonl"])
    with pytest.raises(SystemExit) as exit_info:
        accuracy_code.main()
    assert exit_info.value.code == 2
    assert "must contain '{source}'" in capsys.readouterr().err

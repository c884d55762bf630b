"""The one catalogue of packaged models: every door (CLI, eval scripts) reads it."""

from __future__ import annotations

import importlib
import inspect

import pytest

from dash_vl.weights.catalogue import FORMER_NAMES, PACKAGED_MODELS, packaged_model_name


@pytest.mark.parametrize("name", sorted(PACKAGED_MODELS))
def test_every_entry_names_a_loader_that_takes_device_and_dtype(name: str) -> None:
    entry = PACKAGED_MODELS[name]
    loader = getattr(importlib.import_module(entry.module), entry.loader)
    parameters = list(inspect.signature(loader).parameters)
    assert parameters[:2] == ["device", "dtype"]


def test_former_names_translate_into_the_catalogue() -> None:
    for former, name in FORMER_NAMES.items():
        assert packaged_model_name(former) == name and name in PACKAGED_MODELS
    assert packaged_model_name("gemma3") == "gemma3"


def test_cli_help_and_loading_read_the_catalogue(monkeypatch: pytest.MonkeyPatch) -> None:
    from dash_vl import cli

    assert all(repr(name) in cli.MODEL_HELP for name in PACKAGED_MODELS)
    calls = []
    monkeypatch.setattr(type(PACKAGED_MODELS["gemma3"]), "load", lambda self, device, dtype: calls.append((self, device, dtype)))
    cli.load_language_model("gemma3", None, "bfloat16")
    import torch

    assert calls == [(PACKAGED_MODELS["gemma3"], "cpu", torch.bfloat16)]

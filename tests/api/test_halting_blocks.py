"""One Halting at a time on a model: a second one is refused with a clear error, the same one nests, and every
path out of a block (an exception included) restores the model's forwards and removes every hook."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from dash_vl.api import VisionLanguageModel
from dash_vl.engine.vision_evidence import EvidenceRecorder
from dash_vl.testing import random_model, tiny_config
from tests.conftest import processor_of, vl_inputs


@pytest.fixture()
def model():
    processor = processor_of("qwen2_vl")
    return random_model(tiny_config("qwen2_vl", processor.tokenizer, num_layers=4))


def installed(model: torch.nn.Module) -> int:
    """Hooks and instance-level overrides of ``forward`` (or of any method) on every submodule."""
    hooks = sum(len(module._forward_pre_hooks) + len(module._forward_hooks) for module in model.modules())
    overrides = sum(callable(value) for module in model.modules() for value in vars(module).values()
                    if not isinstance(value, torch.nn.Module))
    return hooks + overrides


def test_a_second_halting_on_the_same_model_is_refused_and_the_first_keeps_working(model):
    inputs = vl_inputs(processor_of("qwen2_vl"), 1)
    outer = Halting(model, ratio=0.5)
    with outer:
        with pytest.raises(ValueError, match=r"already runs under another Halting \(method=dash, ratio=0.5"):
            Halting(model, ratio=0.9).enable()
        with torch.no_grad():
            model(**inputs)
    assert len(outer.reports) == 1 and outer.last_report.ratio == 0.5
    assert installed(model) == 0


def test_loaded_model_wrapped_in_another_halting_refuses_instead_of_answering_with_its_own(model):
    vlm = VisionLanguageModel(model, processor_of("qwen2_vl"), Halting(model).config)
    with Halting(vlm.model, ratio=0.9) as outer:
        with pytest.raises(ValueError, match="set vlm.halting = Halting"):
            vlm.ask("How many?", max_new_tokens=1)
    assert outer.reports == [] and not vlm.halting.enabled
    assert installed(model) == 0


def test_the_same_halting_nests_and_stays_on_until_its_outer_block_ends(model):
    inputs = vl_inputs(processor_of("qwen2_vl"), 1)
    halting = Halting(model, ratio=0.5)
    with halting:
        with halting:
            pass
        assert halting.enabled
        with torch.no_grad():
            model(**inputs)
    assert len(halting.reports) == 1 and not halting.enabled
    assert installed(model) == 0


def test_an_exception_inside_the_block_removes_every_hook(model):
    before = installed(model)
    with pytest.raises(RuntimeError, match="inside"), Halting(model, method="visionzip", ratio=0.5, vision_ratio=None):
        assert installed(model) > before
        raise RuntimeError("inside")
    assert installed(model) == before == 0


def test_a_failure_while_enabling_leaves_nothing_behind(model, monkeypatch):
    def fail(self):
        raise RuntimeError("cannot wrap")

    monkeypatch.setattr(EvidenceRecorder, "install", fail)
    halting = Halting(model, method="visionzip", ratio=0.5)
    with pytest.raises(RuntimeError, match="cannot wrap"):
        halting.enable()
    assert not halting.enabled and installed(model) == 0
    monkeypatch.undo()
    with Halting(model, ratio=0.5):  # the model is free again
        pass
    assert installed(model) == 0


def test_encoder_halting_is_restored_too(model):
    with Halting(model, ratio=0.5, vision_ratio=0.5):
        assert installed(model) >= 3
    assert installed(model) == 0

"""What a user reads after a prompt: ratio 0 says no halting was done; a prompt past the model's positions
is answered with a warning."""

from __future__ import annotations

import warnings

import pytest

from dash_vl.api import VisionLanguageModel
from dash_vl.cli import main
from dash_vl.config import HaltingConfig
from dash_vl.testing import random_model, tiny_config
from tests.conftest import processor_of, random_image


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    assert main(["make-random-model", str(folder), "--layers", "3"]) == 0
    image = folder / "noise.png"
    random_image(1, (56, 56)).save(image)
    return folder, image


def test_ratio_zero_reports_no_halting(saved, capsys):
    folder, image = saved
    assert main(["ask", str(folder), "-q", "Colour?", "--image", str(image), "--max-new-tokens", "1"]) == 0
    err = capsys.readouterr().err
    assert "no halting (ratio 0): every layer ran on all" in err and "halted at layer" not in err


def test_positive_ratio_reports_the_decision_layer(saved, capsys):
    folder, image = saved
    assert main(["ask", str(folder), "-q", "Colour?", "--image", str(image), "--ratio", "0.5", "--max-new-tokens", "1"]) == 0
    assert "halted at layer 1: kept" in capsys.readouterr().err


@pytest.fixture(scope="module")
def short_context_vlm():
    processor = processor_of("qwen2_vl")
    model = random_model(tiny_config("qwen2_vl", processor.tokenizer, num_layers=2, max_position_embeddings=64))
    return VisionLanguageModel(model, processor, HaltingConfig(ratio=0.5))


def test_prompt_beyond_the_models_positions_warns(short_context_vlm):
    with pytest.warns(UserWarning, match=r"plus 2 new tokens exceeds the model's 64 positions \(max_position_embeddings\)"):
        short_context_vlm.ask("word " * 80, max_new_tokens=2)


def test_prompt_within_the_models_positions_does_not_warn(short_context_vlm):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        short_context_vlm.ask("How many?", max_new_tokens=2)

"""The bench's reference prefills (``eval/gpu_timing.py``) compute what they claim: the ideal with
nothing halted is the unmodified model, and DASH's floor at DASH's own selection is DASH; the ideal
encoder keeping every patch is the unmodified tower; ``eval/bench_vit_halting.py --smoke`` runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dash_vl import Halting
from dash_vl.adapters import adapter_for
from tests.conftest import model_of, processor_of, vl_inputs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "eval"))
from gpu_timing import cache_bytes, floor_prefill, ideal_prefill  # noqa: E402

TOKENS = 40
START = 2


def prompt(language_model) -> tuple[torch.Tensor, torch.Tensor]:
    """Random input states ``(1, T, D)`` and M-RoPE ids ``(3, 1, T)`` of a text-only prompt."""
    generator = torch.Generator().manual_seed(5)
    embeds = torch.randn(1, TOKENS, language_model.config.hidden_size, generator=generator)
    return embeds, torch.arange(TOKENS).view(1, 1, -1).expand(3, 1, -1)


def test_ideal_keeping_every_token_is_the_unmodified_model():
    language_model = model_of("qwen2_vl", "sdpa").model.language_model
    embeds, rope_ids = prompt(language_model)
    with torch.no_grad():
        expected = language_model(inputs_embeds=embeds, position_ids=rope_ids).last_hidden_state
        ideal = ideal_prefill(language_model, embeds, rope_ids, START, torch.arange(TOKENS)[None])
    torch.testing.assert_close(ideal, expected, rtol=1e-5, atol=1e-5)


def test_floor_at_dash_selection_is_dash():
    model = model_of("qwen2_vl", "sdpa")
    language_model = model.model.language_model
    embeds, rope_ids = prompt(language_model)
    with torch.no_grad():
        with Halting(model, ratio=0.75, start_layer=START) as halting:
            dash = language_model(inputs_embeds=embeds, position_ids=rope_ids).last_hidden_state
        kept = torch.tensor(halting.last_report.kept_positions)
        assert kept.shape == (1, TOKENS - 29)
        floor = floor_prefill(language_model, embeds, rope_ids, START, kept)
        ideal = ideal_prefill(language_model, embeds, rope_ids, START, kept)
    torch.testing.assert_close(floor, dash, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ideal, dash[:, kept[0]], atol=1e-3)  # the ideal skips the attention over all T


def test_ideal_encoder_keeping_every_patch_is_the_unmodified_tower():
    from gpu_timing import ideal_encoder

    model = model_of("qwen2_5_vl", "sdpa")
    inputs = vl_inputs(processor_of("qwen2_5_vl"), 2, "image")
    pixels, grid = inputs["pixel_values"], inputs["image_grid_thw"]
    with torch.no_grad():
        expected = model.model.visual(pixels, grid_thw=grid).pooler_output
        ideal = ideal_encoder(adapter_for(model).encoder_adapter(), (pixels,), dict(grid_thw=grid), 1, torch.arange(pixels.shape[0]))
    torch.testing.assert_close(ideal.pooler_output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llava_onevision", "internvl"])
def test_ideal_encoder_of_a_tiled_tower_gives_its_last_states(family):
    from gpu_timing import ideal_encoder

    model = model_of(family, "sdpa")
    encoder = adapter_for(model).encoder_adapter()
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        expected = encoder.tower(pixel_values=pixels, output_hidden_states=True)
        ideal = ideal_encoder(encoder, (), dict(pixel_values=pixels), 1, torch.arange(encoder.layout((pixels,), {}).units.numel()))
    torch.testing.assert_close(ideal.last_hidden_state, expected.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ideal.hidden_states[-1], expected.hidden_states[-1], rtol=1e-5, atol=1e-5)
    assert len(ideal.hidden_states) == len(expected.hidden_states)


@pytest.mark.slow
def test_vit_halting_bench_runs_in_smoke_mode(tmp_path):
    script = Path(__file__).resolve().parents[2] / "eval" / "bench_vit_halting.py"
    out = tmp_path / "smoke.json"
    command = [sys.executable, str(script), "--smoke", "--warmup", "0", "--repeats", "1", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    rows = json.loads(out.read_text())["rows"]
    assert {row["setting"] for row in rows if row["part"] == "encoder"} >= {"none", "vit 0.9", "ideal 0.9"}


def test_cache_bytes_counts_keys_values_and_linear_attention_states():
    """A DynamicCache of full-attention layers (keys, values) and linear-attention layers (convolution and
    recurrent states per state index, some not yet set)."""
    from types import SimpleNamespace

    full = SimpleNamespace(keys=torch.zeros(1, 2, 5, 4), values=torch.zeros(1, 2, 5, 4))
    linear = SimpleNamespace(conv_states={0: torch.zeros(1, 8, 4)}, recurrent_states={0: torch.zeros(1, 2, 4, 4), 1: None})
    assert cache_bytes(SimpleNamespace(layers=[full, linear])) == 4 * (40 + 40 + 32 + 32)

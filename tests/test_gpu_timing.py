"""The bench's reference prefills (``eval/gpu_timing.py``) compute what they claim: the ideal with
nothing halted is the unmodified model, and DASH's floor at DASH's own selection is DASH."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dash_vl import Halting
from tests.conftest import model_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))
from gpu_timing import floor_prefill, ideal_prefill  # noqa: E402

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

"""The families' long timing prompts: the model accepts them, they hold about the asked length,
and the engine sees their visual tokens."""

from __future__ import annotations

import pytest
import torch

from dash_vl import Halting
from dash_vl.testing import (
    VIDEO_PROMPT_FAMILIES,
    full_size_config,
    long_prompt,
    long_prompt_batch,
    long_video_prompt,
)
from dash_vl.testing import (
    family as family_module,
)
from tests.conftest import ALL_FAMILY_NAMES, model_of

VISUAL_IDS = ("image_token_id", "video_token_id")


def visual_count(config, input_ids: torch.Tensor) -> int:
    ids = [getattr(config, name) for name in VISUAL_IDS if getattr(config, name, None) is not None]
    return int(torch.isin(input_ids, torch.tensor(ids)).sum())


@pytest.mark.parametrize("family", ALL_FAMILY_NAMES)
def test_tiny_model_runs_a_long_prompt_and_halts_its_visual_tokens(family):
    model = model_of(family, "sdpa")
    prompt = long_prompt(family, model.config, 300, torch.device("cpu"), torch.float32)
    length, visual = prompt["input_ids"].shape[1], visual_count(model.config, prompt["input_ids"])
    assert 260 <= length <= 300 and visual >= (length - 128) // 3  # tiny InternVL frames: 4 visual, 6-7 label tokens
    with Halting(model, ratio=0.5, scope="visual") as halting, torch.no_grad():
        logits = model(**prompt, logits_to_keep=1).logits  # HF checks placeholders against the features
    assert logits.shape[:2] == (1, 1) and torch.isfinite(logits).all()
    assert halting.last_report.eligible_tokens == [visual]
    assert halting.last_report.kept_tokens_per_layer[-1] == [length - visual // 2]


@pytest.mark.parametrize(
    "family, per_unit, units_field",
    [
        ("qwen2_vl", None, None), ("qwen3_vl", None, None), ("qwen3_5", None, None), ("llava_onevision", 196, "pixel_values_videos"),
        ("internvl", 256, "pixel_values"),
    ],
)
def test_full_size_prompt_has_the_checkpoints_tokens_per_frame(family, per_unit, units_field):
    config = full_size_config(family, num_layers=1)
    prompt = long_prompt(family, config, 4096, torch.device("cpu"), torch.bfloat16)
    length, visual = prompt["input_ids"].shape[1], visual_count(config, prompt["input_ids"])
    assert 4096 - 300 <= length <= 4096
    if family.startswith("qwen"):  # one image; 2 x 2 patches a token
        assert visual == prompt["pixel_values"].shape[0] // 4 == int(prompt["image_grid_thw"].prod()) // 4
    else:  # one video; LLaVA-OV adds one newline token after it
        frames = prompt[units_field].shape[-4]
        assert visual == frames * per_unit + (family == "llava_onevision")


@pytest.mark.parametrize("family", VIDEO_PROMPT_FAMILIES)
@pytest.mark.parametrize("frames", [1, 12])
def test_tiny_model_takes_a_video_prompt_of_the_claimed_visual_tokens(family, frames):
    model = model_of(family, "sdpa")
    prompt = long_video_prompt(family, model.config, frames, torch.device("cpu"), torch.float32)
    module, config = family_module(family), model.config
    if family == "llava_onevision":  # pooled frames, one newline token after the video
        claimed, pixels = frames * module.frame_tokens(config) + 1, prompt["pixel_values_videos"].shape[:2]
        assert pixels == (1, frames)
    else:  # one tile a frame, labels around each
        claimed, pixels = frames * config.image_seq_length, prompt["pixel_values"].shape[:1]
        assert pixels == (frames,) and prompt["input_ids"].shape[1] == 128 + module.video_tokens(config, frames)
    assert visual_count(config, prompt["input_ids"]) == claimed
    with torch.no_grad():
        logits = model(**prompt, logits_to_keep=1).logits  # HF checks placeholders against the features
    assert logits.shape[:2] == (1, 1) and torch.isfinite(logits).all()


def test_full_size_video_prompts_state_their_visual_tokens():
    for family, field, visual in (("llava_onevision", "pixel_values_videos", 32 * 196 + 1), ("internvl", "pixel_values", 32 * 256)):
        config = full_size_config(family, num_layers=1)
        prompt = long_video_prompt(family, config, 32, torch.device("cpu"), torch.bfloat16)
        assert visual_count(config, prompt["input_ids"]) == visual and prompt[field].shape[-4] == 32


def test_video_prompt_of_an_image_family_is_a_clear_error():
    with pytest.raises(ValueError, match="no video timing prompt"):
        long_video_prompt("qwen2_vl", full_size_config("qwen2_vl", num_layers=1), 4, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_image_prompt_batch_gives_each_prompt_its_logits_alone(family):
    model = model_of(family, "sdpa")
    cpu, lengths = torch.device("cpu"), [300, 180]
    batch = long_prompt_batch(family, model.config, lengths, cpu, torch.float32)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].sum(dim=1).tolist() == [
        long_prompt(family, model.config, length, cpu, torch.float32)["input_ids"].shape[1] for length in lengths
    ]
    with torch.no_grad():
        together = model(**batch, logits_to_keep=1).logits[:, -1]
        alone = torch.cat([model(**long_prompt(family, model.config, length, cpu, torch.float32), logits_to_keep=1).logits[:, -1]
                           for length in lengths])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_image_prompt_batch_of_a_video_family_is_a_clear_error():
    with pytest.raises(ValueError, match="no batched timing prompt for 'internvl'"):
        long_prompt_batch("internvl", None, [100], torch.device("cpu"), torch.float32)

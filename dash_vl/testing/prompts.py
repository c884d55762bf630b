"""Pieces shared by the families' long timing prompts (``long_prompt`` and ``long_video_prompt`` in
each family module)."""

from __future__ import annotations

from collections.abc import Callable

import torch

TEXT_AROUND = 64
"""Text tokens before and after the visual tokens of a timing prompt."""


def random_text(count: int, first_special_id: int, generator: torch.Generator) -> torch.Tensor:
    """``(count,)`` ordinary text ids drawn below ``first_special_id`` (and below 20000, so they
    stay clear of a real vocabulary's special and added tokens)."""
    high = min(20000, first_special_id)
    return torch.randint(high // 2, high, (count,), device=generator.device, generator=generator)


def frames_fitting(length: int, video_tokens: Callable[[int], int]) -> int:
    """The most frames (at least 1) whose video, ``video_tokens(frames)`` tokens, fits ``length``
    tokens between two :data:`TEXT_AROUND`-token texts."""
    frames = 1
    while video_tokens(frames + 1) + 2 * TEXT_AROUND <= length:
        frames += 1
    return frames


def video_inputs(
    video: Callable[[Callable[[int], torch.Tensor]], list[torch.Tensor]],
    first_special_id: int,
    pixels_field: str,
    pixels_shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Inputs (batch 1) of one video between two :data:`TEXT_AROUND`-token texts: ``video(text)``
    gives the video's id pieces in order (``text(count)`` draws ``count`` random text ids below
    ``first_special_id``, for labels around frames); ``pixels_field`` holds random pixels of
    ``pixels_shape``, all from a generator seeded with ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    text = lambda count: random_text(count, first_special_id, generator)  # noqa: E731
    ids = torch.cat([text(TEXT_AROUND), *video(text), text(TEXT_AROUND)])[None]
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids),
        pixels_field: torch.randn(pixels_shape, device=device, generator=generator).to(dtype),
    }


PER_TOKEN_FIELDS = ("input_ids", "attention_mask", "mm_token_type_ids")
"""Input fields of shape ``(1, T)``: one value per prompt token."""


def left_padded_batch(prompts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Prompts of batch 1 and different lengths as one left-padded batch, as a processor pads them:
    the per-token fields (:data:`PER_TOKEN_FIELDS`) ``(batch, T_max)``, padded with 0 on the left
    (``attention_mask`` 0 there); every other field (``pixel_values``, ``image_grid_thw``: the
    flattened patches and grids of the Qwen-VL families) concatenated along dim 0, prompt after prompt."""
    width = max(prompt["input_ids"].shape[1] for prompt in prompts)
    batch = {}
    for field in prompts[0]:
        parts = [prompt[field] for prompt in prompts]
        if field in PER_TOKEN_FIELDS:
            parts = [torch.nn.functional.pad(part, (width - part.shape[1], 0)) for part in parts]
        batch[field] = torch.cat(parts)
    return batch

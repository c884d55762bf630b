"""Pieces shared by the families' long timing prompts (``long_prompt`` in each family module)."""

from __future__ import annotations

import torch

TEXT_AROUND = 64
"""Text tokens before and after the visual tokens of a timing prompt."""


def random_text(count: int, first_special_id: int, generator: torch.Generator) -> torch.Tensor:
    """``(count,)`` ordinary text ids drawn below ``first_special_id`` (and below 20000, so they
    stay clear of a real vocabulary's special and added tokens)."""
    high = min(20000, first_special_id)
    return torch.randint(high // 2, high, (count,), device=generator.device, generator=generator)

"""The DASH paper's ablations of its halting rule, at the same decision layer and budget.

* ``dash_block``: score by the whole block's update ``‖h_{l_s+1} - h_{l_s}‖₂`` (attention and MLP,
  the MLP run on all ``T`` tokens) instead of the attention update alone.
* ``dash_highest``: halt the tokens with the *highest* ``Δattn`` (the rule inverted).
* ``random``: halt uniformly random eligible tokens (per prompt, ``torch.rand`` over its tokens from a
  CPU generator seeded with the config's ``seed``, so a prompt halts the same tokens alone or in any
  batch, padded or packed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dash_vl.methods.base import DecisionInputs, HaltingMethod, MethodKnobs, ScoredHalting


@dataclass(frozen=True)
class DeltaBlock(ScoredHalting):
    """Keep-score ``‖h_{l_s+1} - h_{l_s}‖₂``, the norm of the whole decoder block's update."""

    needs_block_update = True

    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        return torch.linalg.vector_norm(inputs.block_update(), dim=-1, dtype=torch.float32)


@dataclass(frozen=True)
class HighestDeltaAttention(ScoredHalting):
    """Keep-score ``-‖U_t‖₂``: the tokens with the largest attention update are halted."""

    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        return -torch.linalg.vector_norm(inputs.attention_update(), dim=-1, dtype=torch.float32)


@dataclass(frozen=True)
class RandomHalting(ScoredHalting):
    """Keep-scores drawn per prompt: its ``n`` valid tokens, in prompt order, get
    ``torch.rand(n, generator=torch.Generator().manual_seed(seed))`` (padding gets 0). The draw depends on
    the seed and the prompt's length only (prompts of one length draw the same scores); at a later
    decision it restarts over the tokens still active."""

    seed: int = 0

    @classmethod
    def from_config(cls, config: MethodKnobs) -> HaltingMethod:
        return cls(seed=config.seed)

    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        draws = torch.zeros(len(inputs.valid_counts), max(inputs.valid_counts, default=0) + 1)
        for sample, count in enumerate(inputs.valid_counts):  # drawn on the host; no read from the device
            draws[sample, 1 : count + 1] = torch.rand(count, generator=torch.Generator().manual_seed(self.seed))
        rank = inputs.valid.long().cumsum(dim=1) * inputs.valid  # 1, 2, ... over valid slots, 0 on padding
        return draws.to(inputs.valid.device).gather(1, rank)

"""The DASH paper's ablations of its halting rule, at the same decision layer and budget.

* ``dash_block``: score by the whole block's update ``‖h_{l_s+1} - h_{l_s}‖₂`` (attention and MLP,
  the MLP run on all ``T`` tokens) instead of the attention update alone.
* ``dash_highest``: halt the tokens with the *highest* ``Δattn`` (the rule inverted).
* ``random``: halt uniformly random eligible tokens (``torch.rand`` from a CPU generator seeded
  with the config's ``seed`` on every prompt, so runs are reproducible).
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
    """Keep-scores ``torch.rand((batch, T), generator=torch.Generator().manual_seed(seed))``."""

    seed: int = 0

    @classmethod
    def from_config(cls, config: MethodKnobs) -> HaltingMethod:
        return cls(seed=config.seed)

    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(inputs.valid.shape, generator=generator).to(inputs.valid.device)

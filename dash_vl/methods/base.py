"""What every halting policy receives at the decision layer and must return."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecisionInputs:
    """Tensors of the decision layer ``l_s``, over all ``T`` prompt tokens.

    Attributes:
        hidden_states: ``(batch, T, hidden)``, the residual stream entering layer ``l_s``.
        attention_update: ``(batch, T, hidden)``, the output of layer ``l_s``'s attention
            sub-layer (after ``o_proj``, before the residual add).
    """

    hidden_states: torch.Tensor
    attention_update: torch.Tensor


class HaltingMethod(ABC):
    """A policy that scores prompt tokens; the engine keeps the highest-scoring eligible ones."""

    @abstractmethod
    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        """Keep-scores, ``(batch, T)`` float32: higher means more worth keeping active."""

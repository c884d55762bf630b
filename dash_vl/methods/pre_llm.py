"""What the policies that pick visual tokens before the LLM share (VisionZip, VisPruner, DivPrune, CDPruner).

They decide before layer 0 (placement ``"layer_input"`` at ``l_s = 0``) over the visual tokens
only, so every LLM layer runs on the retained tokens; what they read is the LLM's input
embeddings of the prompt (:attr:`DecisionInputs.hidden_states` entering layer 0: the projector
outputs on the visual tokens) and, where they need it, the vision encoder's evidence.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from dash_vl.methods.base import Decision, DecisionInputs, HaltingMethod, MethodKnobs


class BeforeLanguageModel(HaltingMethod):
    """A policy choosing visual tokens before the LLM: ``start_layer`` 0 and ``scope`` ``"visual"`` only."""

    placement = "layer_input"
    default_scope = "visual"
    default_start_layer = 0
    lowest_start_layer = 0

    @classmethod
    def from_config(cls, config: MethodKnobs) -> HaltingMethod:
        name = cls.__name__
        if config.start_layer != 0:
            raise ValueError(f"{name} reduces tokens before the LLM: start_layer must be 0, got {config.start_layer}")
        if config.scope != "visual":
            raise ValueError(f"{name} reduces visual tokens only: scope must be 'visual', got {config.scope!r}")
        return cls()


class PerPromptSelection(BeforeLanguageModel):
    """A pre-LLM policy that keeps, per prompt, ``round(E (1 - ρ))`` of its ``E`` visual tokens as
    :meth:`select` picks them (DivPrune, CDPruner)."""

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        return self.decide(inputs, ratio).kept

    def decide(self, inputs: DecisionInputs, ratio: float) -> Decision:
        kept = torch.zeros_like(inputs.eligible)
        counts = []
        for sample, total in enumerate(inputs.eligible_counts):
            counts.append(retained_count(ratio, total, f"sample {sample}"))
            positions = inputs.eligible[sample].nonzero().flatten()
            kept[sample, positions[self.select(inputs, sample, positions, counts[-1])]] = True
        return Decision(kept=kept, kept_counts=counts)

    @abstractmethod
    def select(self, inputs: DecisionInputs, sample: int, positions: torch.Tensor, count: int) -> torch.Tensor:
        """``(count,)`` long indices into ``positions`` (sample ``sample``'s visual tokens, ``(E,)`` ascending
        prompt indices) of the tokens kept."""


def crop_grid_order(patches: torch.Tensor, columns: int, side: int) -> torch.Tensor:
    """``(crops * k,)`` long: the order that lays the patches ``patches`` ``(crops, k)`` (patch indices within
    each crop of an anyres grid with ``columns`` crops per row, crops in row-major order, ``side``
    patches a crop side) out in raster order over the whole grid, as LLaVA-NeXT's official code flattens
    its crop features (``permute(0, 2, 1, 3, 4).flatten(0, 3)``); indices into ``patches.flatten()``."""
    crop = torch.arange(patches.shape[0], device=patches.device)[:, None]
    row = crop // columns * side + patches // side
    column = crop % columns * side + patches % side
    return (row * columns * side + column).flatten().argsort()


def retained_count(ratio: float, tokens: int, where: str) -> int:
    """``round(tokens (1 - ratio))``, the tokens retained of ``tokens`` visual tokens (Python's rounding).

    Raises:
        ValueError: if that is zero; ``where`` names the tokens counted (``"a tile or frame"``).
    """
    retained = round(tokens * (1.0 - ratio))
    if retained < 1:
        raise ValueError(
            f"ratio {ratio} retains round({tokens} x {1.0 - ratio:.4g}) = 0 of the {tokens} visual tokens of {where}; "
            "lower the ratio or give the prompt more visual tokens"
        )
    return retained


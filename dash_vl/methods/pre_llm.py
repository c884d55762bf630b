"""What the policies that pick visual tokens before the LLM share (VisionZip, VisPruner, DivPrune, CDPruner).

They decide before layer 0 (placement ``"layer_input"`` at ``l_s = 0``) over the visual tokens
only, so every LLM layer runs on the retained tokens; what they read is the LLM's input
embeddings of the prompt (:attr:`DecisionInputs.hidden_states` entering layer 0: the projector
outputs on the visual tokens) and, where they need it, the vision encoder's evidence.
"""

from __future__ import annotations

from dash_vl.methods.base import HaltingMethod, MethodKnobs


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


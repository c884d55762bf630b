"""Halting policies by name. A new method is one module plus one line here.

``ratio`` means, for every method, the fraction of *eligible* prompt tokens removed from the
decision layer on. Eligible tokens follow ``scope``: visual tokens for the visual baselines
(FastV, DART and the pre-LLM VisionZip, VisPruner, DivPrune, CDPruner: their default scope), all
tokens but the protected ones for DASH and its ablations.
"""

from dash_vl.methods.ablations import DeltaBlock, HighestDeltaAttention, RandomHalting
from dash_vl.methods.base import Decision, DecisionInputs, HaltingMethod, ScoredHalting, halted_count
from dash_vl.methods.cdpruner import CDPruner
from dash_vl.methods.dart import DART, DARTPromptOrder
from dash_vl.methods.dash import DeltaAttention
from dash_vl.methods.divprune import DivPrune
from dash_vl.methods.fastv import FastV
from dash_vl.methods.visionzip import VisionZip
from dash_vl.methods.vispruner import VisPruner

METHODS: dict[str, type[HaltingMethod]] = {
    "dash": DeltaAttention,
    "dash_block": DeltaBlock,
    "dash_highest": HighestDeltaAttention,
    "random": RandomHalting,
    "fastv": FastV,
    "dart": DART,
    "dart_prompt_order": DARTPromptOrder,
    "visionzip": VisionZip,
    "vispruner": VisPruner,
    "divprune": DivPrune,
    "cdpruner": CDPruner,
}

__all__ = [
    "CDPruner", "DART", "DARTPromptOrder", "METHODS", "Decision", "DecisionInputs", "DeltaAttention", "DeltaBlock",
    "DivPrune", "FastV", "HaltingMethod", "HighestDeltaAttention", "RandomHalting", "ScoredHalting", "VisPruner",
    "VisionZip", "halted_count",
]

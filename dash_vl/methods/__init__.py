"""Halting policies by name. A new method is one module plus one line here.

``ratio`` means, for every method, the fraction of *eligible* prompt tokens removed from the
decision layer on. Eligible tokens follow ``scope``: visual tokens for the visual baselines
(FastV, DART, VisionZip: their default scope), all tokens but the protected ones for DASH and its ablations.
"""

from dash_vl.methods.ablations import DeltaBlock, HighestDeltaAttention, RandomHalting
from dash_vl.methods.base import Decision, DecisionInputs, HaltingMethod, ScoredHalting, halted_count
from dash_vl.methods.dart import DART
from dash_vl.methods.dash import DeltaAttention
from dash_vl.methods.fastv import FastV
from dash_vl.methods.visionzip import VisionZip

METHODS: dict[str, type[HaltingMethod]] = {
    "dash": DeltaAttention,
    "dash_block": DeltaBlock,
    "dash_highest": HighestDeltaAttention,
    "random": RandomHalting,
    "fastv": FastV,
    "dart": DART,
    "visionzip": VisionZip,
}

__all__ = [
    "DART", "METHODS", "Decision", "DecisionInputs", "DeltaAttention", "DeltaBlock", "FastV", "HaltingMethod",
    "HighestDeltaAttention", "RandomHalting", "ScoredHalting", "VisionZip", "halted_count",
]

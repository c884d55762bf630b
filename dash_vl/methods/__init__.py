"""Halting policies by name. A new method is one module plus one line here.

``ratio`` means, for every method, the fraction of *eligible* prompt tokens removed from the
decision layer on. Eligible tokens follow ``scope``: visual tokens for the visual baselines
(FastV, DART: their default scope), all tokens but the protected ones for DASH and its ablations.
"""

from dash_vl.methods.ablations import DeltaBlock, HighestDeltaAttention, RandomHalting
from dash_vl.methods.base import DecisionInputs, HaltingMethod, ScoredHalting, halted_count
from dash_vl.methods.dart import DART
from dash_vl.methods.dash import DeltaAttention
from dash_vl.methods.fastv import FastV

METHODS: dict[str, type[HaltingMethod]] = {
    "dash": DeltaAttention,
    "dash_block": DeltaBlock,
    "dash_highest": HighestDeltaAttention,
    "random": RandomHalting,
    "fastv": FastV,
    "dart": DART,
}

__all__ = [
    "DART", "METHODS", "DecisionInputs", "DeltaAttention", "DeltaBlock", "FastV", "HaltingMethod",
    "HighestDeltaAttention", "RandomHalting", "ScoredHalting", "halted_count",
]

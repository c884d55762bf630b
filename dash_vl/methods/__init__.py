"""Halting policies by name. A new method is one module plus one line here.

``ratio`` means, for every method, the fraction of *eligible* prompt tokens removed from the
decision layer on. Eligible tokens follow ``scope``: visual tokens for the visual baselines
(FastV, DART, VisionZip, PyramidDrop: their default scope), all tokens but the protected ones for DASH, its
ablations and SnapKV. A multi-stage method decides again at each of ``stage_layers``, over the tokens still active.
"""

from dash_vl.methods.ablations import DeltaBlock, HighestDeltaAttention, RandomHalting
from dash_vl.methods.base import Decision, DecisionInputs, HaltingMethod, ScoredHalting, halted_count
from dash_vl.methods.dart import DART
from dash_vl.methods.dash import DeltaAttention
from dash_vl.methods.dash_multi import MultiSelectionDeltaAttention
from dash_vl.methods.fastv import FastV
from dash_vl.methods.pyramiddrop import PyramidDrop
from dash_vl.methods.snapkv import SnapKV
from dash_vl.methods.visionzip import VisionZip

METHODS: dict[str, type[HaltingMethod]] = {
    "dash": DeltaAttention,
    "dash_block": DeltaBlock,
    "dash_highest": HighestDeltaAttention,
    "random": RandomHalting,
    "fastv": FastV,
    "dart": DART,
    "visionzip": VisionZip,
    "pyramiddrop": PyramidDrop,
    "snapkv": SnapKV,
    "dash_multi": MultiSelectionDeltaAttention,
}

__all__ = [
    "DART", "METHODS", "Decision", "DecisionInputs", "DeltaAttention", "DeltaBlock", "FastV", "HaltingMethod",
    "HighestDeltaAttention", "MultiSelectionDeltaAttention", "PyramidDrop", "RandomHalting", "ScoredHalting", "SnapKV",
    "VisionZip", "halted_count",
]

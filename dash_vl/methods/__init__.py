"""Halting policies by name. A new method is one module plus one line here.

``ratio`` means, for every method, the fraction of *eligible* prompt tokens removed from the
decision layer on. Eligible tokens follow ``scope``: visual tokens for the visual baselines
(FastV, DART and the pre-LLM VisionZip, VisPruner, DivPrune, CDPruner: their default scope), all
tokens but the protected ones for DASH and its ablations.

The classes are imported on first use (:class:`dash_vl.lazy_registry.LazyRegistry`): listing the
names imports no torch.
"""

from dash_vl.lazy_registry import LazyRegistry, lazy_attributes

METHODS = LazyRegistry({
    "dash": "dash_vl.methods.dash:DeltaAttention",
    "dash_block": "dash_vl.methods.ablations:DeltaBlock",
    "dash_highest": "dash_vl.methods.ablations:HighestDeltaAttention",
    "random": "dash_vl.methods.ablations:RandomHalting",
    "fastv": "dash_vl.methods.fastv:FastV",
    "dart": "dash_vl.methods.dart:DART",
    "dart_prompt_order": "dash_vl.methods.dart:DARTPromptOrder",
    "visionzip": "dash_vl.methods.visionzip:VisionZip",
    "vispruner": "dash_vl.methods.vispruner:VisPruner",
    "divprune": "dash_vl.methods.divprune:DivPrune",
    "cdpruner": "dash_vl.methods.cdpruner:CDPruner",
})
"""Method key → its :class:`~dash_vl.methods.base.HaltingMethod` subclass."""

_BASE = ("Decision", "DecisionInputs", "HaltingMethod", "ScoredHalting", "halted_count")
__getattr__ = lazy_attributes(__name__, {
    **{path.partition(":")[2]: path for path in METHODS.paths.values()},
    **{name: f"dash_vl.methods.base:{name}" for name in _BASE},
})

__all__ = [
    "CDPruner", "DART", "DARTPromptOrder", "METHODS", "Decision", "DecisionInputs", "DeltaAttention", "DeltaBlock",
    "DivPrune", "FastV", "HaltingMethod", "HighestDeltaAttention", "RandomHalting", "ScoredHalting", "VisPruner",
    "VisionZip", "halted_count",
]

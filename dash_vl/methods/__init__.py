"""Halting policies by name. A new method is one module plus one line here.

``ratio`` means, for every method, the fraction of *eligible* prompt tokens removed from the
decision layer on. Eligible tokens follow ``scope``: visual tokens for the visual baselines
(FastV, DART, PyramidDrop and the pre-LLM VisionZip, VisPruner, DivPrune, CDPruner: their default
scope), all tokens but the protected ones for DASH, its ablations and SnapKV. A multi-stage method
decides again at each of ``stage_layers``, over the tokens still active.

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
    "pyramiddrop": "dash_vl.methods.pyramiddrop:PyramidDrop",
    "snapkv": "dash_vl.methods.snapkv:SnapKV",
    "dash_multi": "dash_vl.methods.dash_multi:MultiSelectionDeltaAttention",
})
"""Method key → its :class:`~dash_vl.methods.base.HaltingMethod` subclass."""

_BASE = ("Decision", "DecisionInputs", "HaltingMethod", "ScoredHalting", "halted_count")
__getattr__ = lazy_attributes(__name__, {
    **{path.partition(":")[2]: path for path in METHODS.paths.values()},
    **{name: f"dash_vl.methods.base:{name}" for name in _BASE},
})

__all__ = [
    "CDPruner", "DART", "DARTPromptOrder", "METHODS", "Decision", "DecisionInputs", "DeltaAttention", "DeltaBlock",
    "DivPrune", "FastV", "HaltingMethod", "HighestDeltaAttention", "MultiSelectionDeltaAttention", "PyramidDrop", "RandomHalting", "ScoredHalting",
    "SnapKV", "VisPruner",
    "VisionZip", "halted_count",
]

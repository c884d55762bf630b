"""Halting policies by name. A new method is one module plus one line here."""

from dash_vl.methods.base import DecisionInputs, HaltingMethod
from dash_vl.methods.dash import DeltaAttention

METHODS: dict[str, type[HaltingMethod]] = {
    "dash": DeltaAttention,
}

__all__ = ["METHODS", "DecisionInputs", "HaltingMethod", "DeltaAttention"]

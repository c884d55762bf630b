"""dash_vl: faster long-context prefill of VLMs and LLMs by halting tokens that stopped changing."""

from dash_vl.api import VisionLanguageModel, load
from dash_vl.config import HaltingConfig
from dash_vl.halting import Halting
from dash_vl.report import HaltingReport

__all__ = ["Halting", "HaltingConfig", "HaltingReport", "VisionLanguageModel", "load"]
__version__ = "0.1.0"

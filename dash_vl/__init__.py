"""dash_vl: faster long-context prefill of VLMs and LLMs by halting tokens that stopped changing."""

from dash_vl.api import VisionLanguageModel, load
from dash_vl.config import HaltingConfig
from dash_vl.diagnosis import Diagnosis, DiagnosisConfig, diagnose
from dash_vl.halting import Halting
from dash_vl.report import HaltingReport
from dash_vl.version import __version__

__all__ = [
    "Diagnosis", "DiagnosisConfig", "Halting", "HaltingConfig", "HaltingReport", "VisionLanguageModel", "__version__",
    "diagnose", "load",
]

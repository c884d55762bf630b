"""dash_vl: faster long-context prefill of VLMs and LLMs by halting tokens that stopped changing."""

__version__ = "0.1.0"

from dash_vl.api import VisionLanguageModel, load  # noqa: E402
from dash_vl.config import HaltingConfig  # noqa: E402
from dash_vl.diagnosis import Diagnosis, DiagnosisConfig, diagnose  # noqa: E402
from dash_vl.halting import Halting  # noqa: E402
from dash_vl.report import HaltingReport  # noqa: E402

__all__ = [
    "Diagnosis", "DiagnosisConfig", "Halting", "HaltingConfig", "HaltingReport", "VisionLanguageModel", "diagnose", "load",
]

"""dash_vl: faster long-context prefill of VLMs and LLMs by halting tokens that stopped changing.

``import dash_vl`` is light: each name below is imported on first use (torch, transformers and the
engine load when a model does), so that ``dash-vl --help`` answers at once.
"""

from dash_vl.lazy_registry import lazy_attributes
from dash_vl.version import __version__

__getattr__ = lazy_attributes(__name__, {
    "Diagnosis": "dash_vl.diagnosis.run:Diagnosis",
    "DiagnosisConfig": "dash_vl.diagnosis.config:DiagnosisConfig",
    "Halting": "dash_vl.halting:Halting",
    "HaltingConfig": "dash_vl.config:HaltingConfig",
    "HaltingReport": "dash_vl.report:HaltingReport",
    "VisionLanguageModel": "dash_vl.api:VisionLanguageModel",
    "diagnose": "dash_vl.diagnosis.run:diagnose",
    "load": "dash_vl.api:load",
    "scenes_vlm": "dash_vl.weights.scenes_vlm",
})

__all__ = [
    "Diagnosis", "DiagnosisConfig", "Halting", "HaltingConfig", "HaltingReport", "VisionLanguageModel", "__version__",
    "diagnose", "load",
]

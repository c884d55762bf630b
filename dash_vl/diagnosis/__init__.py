"""``dash-vl diagnose``: do DASH's premises hold for this model on these prompts? The knobs
(:mod:`.config`, importable without torch), the run (:mod:`.run`), the per-layer traces it reads
(:mod:`.layer_trace`, :mod:`.attention_received`), its statistics, prompts, files and plots."""

from dash_vl.lazy_registry import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "Diagnosis": "dash_vl.diagnosis.run:Diagnosis",
    "DiagnosisConfig": "dash_vl.diagnosis.config:DiagnosisConfig",
    "diagnose": "dash_vl.diagnosis.run:diagnose",
})

__all__ = ["Diagnosis", "DiagnosisConfig", "diagnose"]

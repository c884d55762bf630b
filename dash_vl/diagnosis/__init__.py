"""``dash-vl diagnose``: do DASH's premises hold for this model on these prompts? The run
(:mod:`.run`), the per-layer traces it reads (:mod:`.layer_trace`, :mod:`.attention_received`), its
statistics, prompts, files and plots."""

from dash_vl.diagnosis.run import Diagnosis, DiagnosisConfig, diagnose

__all__ = ["Diagnosis", "DiagnosisConfig", "diagnose"]

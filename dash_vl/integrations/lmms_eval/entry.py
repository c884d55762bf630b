"""The ``lmms_eval.models`` entry point of dash_vl (``pyproject.toml``): the manifests of its models.

lmms-eval loads its entry points while ``lmms_eval.models`` is first imported, and
:mod:`dash_vl.integrations.lmms_eval.models` imports ``lmms_eval.models``; so the entry point lives here, in a
module that imports neither at import time, and names the model classes by path only. Whichever
is imported first, the registry gets dash_vl's models.
"""

from __future__ import annotations

from typing import Any

MODEL_CLASSES: dict[str, str] = {
    "dash_qwen2_vl": "DashQwen2VL",
    "dash_qwen3_vl": "DashQwen3VL",
    "dash_llava_onevision": "DashLlavaOnevision",
    "dash_internvl": "DashInternVL",
    "dash_llava": "DashLlava",
    "dash_llava_next": "DashLlavaNext",
    "dash_qwen3_5": "DashQwen3_5",
}
"""lmms-eval model name: class in :mod:`dash_vl.integrations.lmms_eval.models`."""


def manifests() -> list[Any]:
    """One ``lmms_eval.models.registry_v2.ModelManifest`` per family."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [
        ModelManifest(model_id=name, simple_class_path=f"dash_vl.integrations.lmms_eval.models.{cls}")
        for name, cls in MODEL_CLASSES.items()
    ]

"""The ``dash_scenes`` task: a held-out synthetic scene of ``dash_vl.suites.scenes`` per document.

The image is drawn from the document's ``scene`` field (no image files, no network); the
answer is one word, scored by exact match on the first word of the reply.
"""

from __future__ import annotations

from PIL import Image

from dash_vl.suites.scenes import Scene, first_word


def dash_scenes_doc_to_visual(doc: dict) -> list[Image.Image]:
    return [Scene.from_json(doc["scene"]).render()]


def dash_scenes_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def dash_scenes_process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return {"exact_match": float(first_word(results[0]) == doc["answer"])}

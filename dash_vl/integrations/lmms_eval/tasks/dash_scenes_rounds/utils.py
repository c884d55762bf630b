"""The ``dash_scenes_rounds`` task: one held-out scene of ``dash_vl.suites.scenes`` per document and its
questions, asked one per round (``generate_until_multi_round``).

Every round shows the scene again with the next question (the model answers each as a prompt
of its own). The image is drawn from the document (no image files, no network). Scores: exact
match per round (first word of the reply), averaged over the document's rounds, and whether
every round was right.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from dash_vl.suites.scenes import Scene, first_word


def dash_scenes_rounds_doc_to_visual(doc: dict) -> list[Image.Image]:
    return [Scene.from_json(doc["scene"]).render()]


def dash_scenes_rounds_doc_to_text(
    doc: dict,
    lmms_eval_specific_kwargs: dict | None = None,
    previous_output: list[str] | None = None,
    round_idx: int | None = None,
    previous_round_info: Any = None,
) -> str | tuple:
    """The first round's text when lmms-eval builds the request (``round_idx`` is None); after
    round ``round_idx - 1``: ``(visuals, text, finished, answers so far, None)`` for the next one."""
    kwargs = lmms_eval_specific_kwargs or {}
    ask = lambda index: f"{kwargs.get('pre_prompt', '')}{doc['questions'][index]}{kwargs.get('post_prompt', '')}"  # noqa: E731
    if round_idx is None:
        return ask(0)
    if round_idx >= len(doc["questions"]):
        return None, None, True, previous_output, None
    return dash_scenes_rounds_doc_to_visual(doc), ask(round_idx), False, previous_output, None


def dash_scenes_rounds_process_results(doc: dict, results: list) -> dict[str, float]:
    replies = results[0] if results and isinstance(results[0], (list, tuple)) else results
    right = [first_word(reply) == answer for reply, answer in zip(replies, doc["answers"])]
    right += [False] * (len(doc["answers"]) - len(right))
    return {"exact_match": sum(right) / len(right), "all_rounds_right": float(all(right))}

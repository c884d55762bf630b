"""Write the documents of the offline lmms-eval tasks ``dash_scenes`` and ``dash_scenes_rounds``
(held-out synthetic scenes).

Each ``dash_scenes`` document holds a scene of ``dash_vl.suites.scenes`` (split ``heldout``, so never
seen in training), one question about it and its exact one-word answer; questions are balanced
over ``--kinds``. With ``--rounds N`` each document instead holds one scene and 2 to N of its
questions of ``--kinds``, which the multi-round task ``dash_scenes_rounds`` asks one per round.
The tasks' ``utils.py`` draw the image from the document, so they need no image files and no
network.

The committed tasks were made with

    python eval/make_scenes_task.py --count 200
    python eval/make_scenes_task.py --count 40 --rounds 4

(all eight kinds, which the shipped scenes model answers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dash_vl.integrations.lmms_eval.offline_tasks import TASKS_DIRECTORY as TASKS
from dash_vl.suites.scenes import QUESTION_KINDS, balanced_questions, scene_questions

TASK_FILE = TASKS / "dash_scenes" / "dash_scenes.jsonl"
ROUNDS_TASK_FILE = TASKS / "dash_scenes_rounds" / "dash_scenes_rounds.jsonl"


def single_question_documents(count: int, kinds: tuple[str, ...], seed: int) -> list[dict]:
    pairs = balanced_questions("heldout", seed, count, kinds=kinds)
    return [
        dict(id=index, kind=question.kind, question=question.question, answer=question.answer, scene=scene.to_json())
        for index, (scene, question) in enumerate(pairs)
    ]


def multi_round_documents(count: int, rounds: int, kinds: tuple[str, ...], seed: int) -> list[dict]:
    """``count`` scenes with 2 to ``rounds`` questions each of ``kinds`` (scenes with fewer are skipped)."""
    documents: list[dict] = []
    index = 0
    while len(documents) < count:
        scene, questions = scene_questions("heldout", seed, index)
        index += 1
        asked = [question for question in questions if question.kind in kinds][:rounds]
        if len(asked) >= 2:
            documents.append(dict(
                id=len(documents), kinds=[q.kind for q in asked], questions=[q.question for q in asked],
                answers=[q.answer for q in asked], scene=scene.to_json(),
            ))
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=list(QUESTION_KINDS), choices=QUESTION_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=None, help="write the multi-round task, up to this many questions a scene")
    parser.add_argument("--output", type=Path, default=None, help="default: the task's file under dash_vl/integrations/lmms_eval/tasks")
    args = parser.parse_args()

    kinds = tuple(args.kinds)
    if args.rounds is None:
        documents, output = single_question_documents(args.count, kinds, args.seed), args.output or TASK_FILE
    else:
        documents = multi_round_documents(args.count, args.rounds, kinds, args.seed)
        output = args.output or ROUNDS_TASK_FILE
    with output.open("w") as handle:
        handle.writelines(json.dumps(document) + "\n" for document in documents)
    print(f"wrote {len(documents)} documents to {output}")


if __name__ == "__main__":
    main()

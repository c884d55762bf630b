"""Write the documents of the offline lmms-eval task ``dash_scenes`` (held-out synthetic scenes).

Each document holds a scene of ``dash_vl.scenes`` (split ``heldout``, so never seen in
training), one question about it and its exact one-word answer; the task's ``utils.py`` draws
the image from the document, so the task needs no image files and no network. Questions are
balanced over ``--kinds``.

The committed task was made with

    python eval/make_scenes_task.py --count 200 --kinds colour shape count count_all exists

(the five kinds the shipped scenes model answers: it did not learn left/right, above/below or
reading, so questions of those kinds are at chance with or without halting).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dash_vl.scenes import QUESTION_KINDS, balanced_questions

TASK_FILE = Path(__file__).parent / "tasks" / "dash_scenes" / "dash_scenes.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--kinds", nargs="+", default=list(QUESTION_KINDS), choices=QUESTION_KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=TASK_FILE)
    args = parser.parse_args()

    pairs = balanced_questions("heldout", args.seed, args.count, kinds=tuple(args.kinds))
    with args.output.open("w") as handle:
        for index, (scene, question) in enumerate(pairs):
            document = dict(id=index, kind=question.kind, question=question.question, answer=question.answer,
                            scene=scene.to_json())
            handle.write(json.dumps(document) + "\n")
    print(f"wrote {len(pairs)} documents to {args.output}")


if __name__ == "__main__":
    main()

"""The sweep grid and report shared by the accuracy scripts: cells of (method, ratio, l_s, question), the
halting config of a cell, a markdown table of a score against relative prefill FLOPs, and the files
(CSV, table, PNGs) written from a finished results file."""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dash_vl.config import HaltingConfig
from dash_vl.suites.prompt_scoring import ScoredAnswer, mean_score
from dash_vl.suites.sweep import Cell, ResultStore, pooled

UNMODIFIED = "none"


def add_grid_arguments(parser: argparse.ArgumentParser, ratios: list[float]) -> None:
    """``--device``, ``--dtype`` and the grid's axes: ``--methods``, ``--ratios``, ``--questions``, ``--start-layers``."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--methods", nargs="+", default=["dash", "dash_highest", "random", "fastv", "dart"])
    parser.add_argument("--ratios", nargs="+", type=float, default=ratios)
    parser.add_argument("--questions", nargs="+", default=["after_context", "halted"])
    parser.add_argument("--start-layers", nargs="+", default=["default"], help="'default' (the method's) or layer indices")


def config_for(cell: Cell) -> HaltingConfig | None:
    if cell["method"] == UNMODIFIED:
        return None
    start = None if cell["start_layer"] == "default" else int(cell["start_layer"])
    return HaltingConfig(
        method=cell["method"], ratio=cell["ratio"], start_layer=start, scope="all", question=cell["question"]
    )


def measure_cell(
    cell: Cell, groups: Sequence[Sequence[Any]], answer: Callable[[Sequence[Any], HaltingConfig | None], list[ScoredAnswer]],
    num_layers: int, score: str, **extra: Any,
) -> list[dict]:
    """One row per (task, length) of the prompt ``groups`` answered under ``cell``: the prompt count,
    the mean score (under the name ``score``), the decision layer, the mean relative prefill FLOPs
    and kept fraction, then ``extra``, then each prompt's score (``scores``, in the suite's order, the
    same in every cell: what paired comparisons pair)."""
    config = config_for(cell)
    answers = defaultdict(list)
    for group in groups:
        for sample, found in zip(group, answer(group, config)):
            answers[(sample.task, sample.length)].append(found)
    layer = "-" if config is None else config.decision_layer(num_layers)
    return [
        dict(
            task=task, length=length, n=len(found), **{score: mean_score(found)}, decision_layer=layer,
            relative_flops=sum(a.relative_flops for a in found) / len(found),
            kept_fraction=sum(a.kept_tokens / a.prompt_tokens for a in found) / len(found),
            **extra, scores=[a.score for a in found],
        )
        for (task, length), found in sorted(answers.items())
    ]


def grid(args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = [dict(method=UNMODIFIED, ratio=0.0, start_layer="-", question="-")]
    for method in args.methods:
        for start in args.start_layers:
            for question in args.questions:
                for ratio in args.ratios:
                    cells.append(dict(method=method, ratio=ratio, start_layer=start, question=question))
    return cells


def table(rows: list[dict], score: str = "accuracy") -> str:
    """Markdown: ``score`` and relative FLOPs per cell, pooled over tasks and lengths, then per length."""
    lengths = sorted({row["length"] for row in rows})
    cells = pooled(rows, ("question", "method", "start_layer", "ratio"), score, "relative_flops")
    per_length = pooled(rows, ("question", "method", "start_layer", "ratio", "length"), score, "relative_flops")
    layers = {}
    for row in rows:
        layers[(row["method"], row["start_layer"])] = row["decision_layer"]
    header = f"| question | method | l_s | ρ | rel. FLOPs | {score} | " + " | ".join(f"@{n}" for n in lengths) + " |"
    lines = [header, "|" + "---|" * (6 + len(lengths))]
    def order(item: tuple) -> tuple:
        question, method, start, ratio = item[0]
        return question != "-", question, method, str(layers[(method, start)]).zfill(3), ratio

    for key, (flops, acc) in sorted(cells.items(), key=order):
        question, method, start, ratio = key
        by_length = " | ".join(f"{per_length[key + (n,)][1]:.3f}" for n in lengths)
        lines.append(
            f"| {question} | {method} | {layers[(method, start)]} | {ratio} | {flops:.3f} | {acc:.3f} | {by_length} |"
        )
    return "\n".join(lines)


def write_report(store: ResultStore, results: str, score: str, title: str) -> None:
    """Write the CSV, the markdown table, its paired comparisons (``<stem>_paired.md``, :mod:`paired_tables`)
    and two PNGs (``score`` against relative FLOPs and against the ratio, one line per method and decision
    layer, one panel per question protocol) beside ``results``."""
    from paired_tables import report
    from plots import plot_lines

    rows = store.rows()
    stem = str(Path(results).with_suffix(""))
    store.write_csv(stem + ".csv")
    Path(stem + ".md").write_text(table(rows, score) + "\n")
    Path(stem + "_paired.md").write_text(report(rows, score))
    print(table(rows, score))
    unmodified = pooled([r for r in rows if r["method"] == UNMODIFIED], ("method",), score, "relative_flops")
    reference = unmodified[(UNMODIFIED,)][1] if unmodified else None
    halted = [{**row, "label": f"{row['method']} l_s={row['decision_layer']}"} for row in rows if row["method"] != UNMODIFIED]
    for x, suffix in (("relative_flops", "_flops.png"), ("ratio", "_ratio.png")):
        plot_lines(halted, x, score, "label", "question", stem + suffix, title, reference=reference)

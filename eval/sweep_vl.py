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
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dash_vl.api import Query, VisionLanguageModel, load
from dash_vl.config import SCOPES, HaltingConfig
from dash_vl.halting import Halting
from dash_vl.integrations.lmms_eval.offline_tasks import task_folder
from dash_vl.knobs import KNOBS
from dash_vl.suites.sweep import Cell, ResultStore, run_sweep, sweep_header, weights_fingerprint

sys.path.insert(0, str(Path(__file__).parent))

UNMODIFIED = "none"
CELL_KNOBS = ("method", "ratio", "scope")
"""The knobs a cell sets; the others keep their defaults (in the results file's header)."""
DEFAULT_RATIOS = (0.0, 0.5, 0.75, 0.9, 0.96, 0.98, 0.99)


@dataclass(frozen=True)
class LocalTask:
    """An offline lmms-eval task's documents and its own rendering and scoring functions."""

    name: str
    documents: list[dict]
    to_visual: Callable[[dict], list]
    to_text: Callable[[dict], str]
    score: Callable[[dict, list[str]], dict[str, float]]
    metric: str
    max_new_tokens: int

    @classmethod
    def load(cls, name: str, limit: int | None) -> LocalTask:
        """``dash_vl/integrations/lmms_eval/tasks/<name>/``: ``<name>.jsonl`` documents, ``utils.py`` functions
        ``<name>_doc_to_visual``, ``_doc_to_text``, ``_process_results`` (lmms-eval's names), and
        from ``<name>.yaml`` the default prompt kwargs, the first metric and ``max_new_tokens``."""
        folder = task_folder(name)
        spec = importlib.util.spec_from_file_location(f"{name}_utils", folder / "utils.py")
        utils = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(utils)
        with (folder / f"{name}.jsonl").open() as handle:
            documents = [json.loads(line) for line in handle if line.strip()][:limit]
        settings = task_settings(folder / f"{name}.yaml")
        if settings["output_type"] != "generate_until":
            raise ValueError(f"task {name!r} is {settings['output_type']!r}; the sweep answers generate_until tasks only")
        prompt_kwargs = settings["lmms_eval_specific_kwargs"]["default"]
        return cls(
            name, documents, getattr(utils, f"{name}_doc_to_visual"),
            lambda doc: getattr(utils, f"{name}_doc_to_text")(doc, prompt_kwargs),
            getattr(utils, f"{name}_process_results"), settings["metric_list"][0]["metric"],
            settings["generation_kwargs"]["max_new_tokens"],
        )


def task_settings(path: Path) -> dict:
    """An lmms-eval task YAML as a dict (``!function`` tags kept as their strings)."""
    import yaml

    class TaskLoader(yaml.SafeLoader):
        pass

    TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=TaskLoader)


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


def timed_first_token(vlm: VisionLanguageModel, queries: list[Query]) -> float:
    """Seconds to answer ``queries`` with one new token (prefill and vision encoder)."""
    synchronize = torch.cuda.synchronize if vlm.model.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    vlm.answer(queries, max_new_tokens=1)
    synchronize()
    return time.perf_counter() - start


def measure_cell(vlm: VisionLanguageModel, task: LocalTask, config: HaltingConfig | None, batch_size: int) -> dict:
    """One row: the score of ``task`` under ``config`` (``None``: the unmodified model), kept tokens,
    relative FLOPs, prefill latency and peak memory."""
    try:
        vlm.halting = None if config is None else Halting(vlm.model, config)
    except ValueError as error:
        return dict(n=0, error=str(error))
    on_gpu = vlm.model.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    scores, kept, prompt, flops, latencies = [], [], [], [], []
    try:
        for start in range(0, len(task.documents), batch_size):
            documents = task.documents[start:start + batch_size]
            queries = [Query(task.to_text(doc), tuple(task.to_visual(doc))) for doc in documents]
            if start == 0:
                timed_first_token(vlm, queries)  # warm-up, not counted
            latencies.append(timed_first_token(vlm, queries))
            answers = vlm.answer(queries, max_new_tokens=task.max_new_tokens)
            scores += [task.score(doc, [answer])[task.metric] for doc, answer in zip(documents, answers)]
            if vlm.halting is None:
                counts = vlm.prepare(queries)["attention_mask"].sum(dim=1).tolist()
                kept, prompt, flops = kept + counts, prompt + counts, flops + [1.0] * len(documents)
                continue
            report = vlm.last_report
            kept += report.kept_tokens_per_layer[-1]
            prompt += report.prompt_tokens
            flops += [report.relative_flops] * len(documents)
    except ValueError as error:
        return dict(n=0, error=str(error))
    n = len(scores)
    return dict(
        n=n, score=sum(scores) / n,
        kept_tokens=sum(kept) / n, prompt_tokens=sum(prompt) / n, relative_flops=sum(flops) / n,
        prefill_ms=1000 * statistics.median(latencies),
        peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
    )


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

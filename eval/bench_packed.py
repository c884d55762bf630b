"""Ragged batches (issue 26): one left-padded batch vs one packed batch vs the prompts one by one.

Qwen2-VL-7B language tower shapes, random bf16 weights (speed does not depend on weight values),
SDPA for the padded runs, FlexAttention for the packed ones (``HaltingConfig.packing``; compiled
on the GPU by ``torch.compile(flex_attention)``, the compile falls in the warm-up). The language
tower is called directly on random input states of text prompts of ``--lengths`` tokens (the ViT
does not run; no logits), so every method runs with ``scope="all"``.

Part 1, the mixed batch, per setting (the unmodified model, the engine halting nothing, DASH, FastV
and DART at ``--ratio``, each at its default decision layer):

* ``padded``: the four prompts as one batch, left-padded to the longest (``packing="off"``);
* ``packed``: the same batch with ``packing="ragged"`` (not for the unmodified model, which has no
  packed path);
* ``one by one``: each prompt alone, batch 1, one after the other (``packing="off"``).

``one/padded`` and ``one/packed`` are the one-by-one time over the batch's: at least 1.0 means the
batch is no slower than running its prompts alone. ``rel err`` compares the packed run's last-token
states with the padded run's (``‖packed − padded‖ / ‖padded‖``, bf16; DASH may keep a few other
tokens where bf16 rounding reorders near-equal scores).

Part 2, one prompt of ``--single`` tokens (batch 1): SDPA (``packing="off"``) vs FlexAttention
(``packing="always"``) for the engine halting nothing and DASH.

Times are medians of ``--repeats`` CUDA-event timings after ``--warmup`` runs, the modes of one
setting taking turns (reverse order every other repeat); peak memory is one more run of each.
About 3-4 minutes on one H200 with the defaults (most of it the unmodified padded batch and the
first FlexAttention compiles).

    python eval/bench_packed.py --out eval/results/raw/packed_qwen2vl7b.json
    python eval/bench_packed.py --smoke          # tiny shapes on the CPU: proves the script runs
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from batch_runs import SMOKE_LENGTHS, Prompts, guarded_row, halting_for, measure_modes, qwen2_vl_model, relative_error
from gpu_timing import add_timing_arguments, print_table, report_run


def prefill(model, method: str, ratio: float, packing: str, inputs: list[dict]) -> Callable[[], list]:
    """A run: ``inputs`` through the language tower, one call after the other, under the setting's
    halting; returns each call's last-token states ``(batch, D)``."""
    language_model = model.model.language_model

    def run() -> list:
        with halting_for(model, method, ratio, packing=packing) or nullcontext(), torch.no_grad():
            return [language_model(**call, use_cache=True).last_hidden_state[:, -1] for call in inputs]

    return run


def settings_of(args) -> list[tuple[str, str, float]]:
    """(label, method, ratio): the unmodified model, the engine halting nothing, each method at ``--ratio``."""
    return [("HF", "none", 0.0), ("engine ρ=0", "dash", 0.0)] + [
        (f"{method} ρ={args.ratio}", method, args.ratio) for method in args.methods
    ]


def mixed_batch_row(model, prompts: Prompts, method: str, ratio: float, args, device: torch.device) -> dict:
    one_by_one = [prompts.alone(sample) for sample in range(len(prompts.lengths))]
    runs = dict(padded=prefill(model, method, ratio, "off", [prompts.batch()]))
    if method != "none":
        runs["packed"] = prefill(model, method, ratio, "ragged", [prompts.batch()])
    runs["one"] = prefill(model, method, ratio, "off", one_by_one)
    row = measure_modes(runs, args, device)
    row["one_over_padded"] = row["one_ms"] / row["padded_ms"]
    if "packed" in runs:
        row["one_over_packed"] = row["one_ms"] / row["packed_ms"]
        row["padded_over_packed"] = row["padded_ms"] / row["packed_ms"]
        row["rel_err"] = relative_error(runs["packed"](), runs["padded"]())
    return row


def single_prompt_row(model, prompts: Prompts, method: str, ratio: float, args, device: torch.device) -> dict:
    runs = {
        "sdpa": prefill(model, method, ratio, "off", [prompts.alone(0)]),
        "flex": prefill(model, method, ratio, "always", [prompts.alone(0)]),
    }
    row = dict(T=prompts.lengths[0], **measure_modes(runs, args, device))
    row["sdpa_over_flex"] = row["sdpa_ms"] / row["flex_ms"]
    row["rel_err"] = relative_error(runs["flex"](), runs["sdpa"]())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 12288, 8192, 4096], help="the mixed batch")
    parser.add_argument("--single", type=int, default=16384, help="tokens of the batch-1 SDPA vs FlexAttention prompt")
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", default=["dash", "fastv", "dart"])
    parser.add_argument("--smoke", action="store_true", help="tiny model and prompts on the CPU, host clock")
    add_timing_arguments(parser, warmup=1, repeats=3)
    args = parser.parse_args()

    began = time.perf_counter()
    if args.smoke:
        args.lengths, args.single = list(SMOKE_LENGTHS), SMOKE_LENGTHS[0]
    model, device, dtype = qwen2_vl_model(args.smoke)
    hidden_size = model.model.language_model.config.hidden_size

    mixed = Prompts(args.lengths, hidden_size, device, dtype)
    rows = [
        guarded_row(label, lambda: mixed_batch_row(model, mixed, method, ratio, args, device), device)
        for label, method, ratio in settings_of(args)
    ]
    print_table(
        rows,
        {
            "setting": "{setting}", "padded ms": "{padded_ms:.1f}", "packed ms": "{packed_ms:.1f}",
            "one by one ms": "{one_ms:.1f}", "one/padded": "{one_over_padded:.2f}", "one/packed": "{one_over_packed:.2f}",
            "padded/packed": "{padded_over_packed:.2f}", "peak GiB padded / packed / one": (
                "{padded_gib:.1f} / {packed_gib:.1f} / {one_gib:.1f}"
            ), "rel err": "{rel_err:.1e}", "error": "{error}",
        },
    )
    single = Prompts([args.single], hidden_size, device, dtype)
    single_rows = [
        guarded_row(label, lambda: single_prompt_row(model, single, method, ratio, args, device), device)
        for label, method, ratio in settings_of(args)[1:3]
    ]
    print_table(
        single_rows,
        {
            "setting": "{setting}", "T": "{T}", "SDPA ms": "{sdpa_ms:.1f}", "Flex ms": "{flex_ms:.1f}",
            "SDPA/Flex": "{sdpa_over_flex:.2f}", "peak GiB SDPA / Flex": "{sdpa_gib:.1f} / {flex_gib:.1f}",
            "rel err": "{rel_err:.1e}", "error": "{error}",
        },
    )
    report_run(
        rows + single_rows, args.out, model="Qwen2-VL-7B language tower shapes, random bf16" if not args.smoke else "tiny",
        command=" ".join(sys.argv), lengths=args.lengths, single=args.single, ratio=args.ratio, methods=args.methods,
        warmup=args.warmup, repeats=args.repeats, seconds=round(time.perf_counter() - began, 1),
    )


if __name__ == "__main__":
    main()

"""A mixed batch of image prompts through the whole model: padded, packed and one by one (issue 26).

VisionZip selects visual tokens inside the vision tower, so the text-only batches of
``bench_packed.py`` and ``bench_flash4.py`` cannot time it. Here the whole Qwen2-VL-7B (random bf16
weights, on the GPU) runs on one random image per prompt, of about ``--batch`` tokens each (the text
batch's 16k / 12k / 8k / 4k by default): vision tower, merger and language model, logits of the last
position only. The vision tower's time is the same in every mode and is in every number.

Modes of each setting, taking turns (medians of ``--repeats`` CUDA-event timings after ``--warmup``):

* ``batch_sdpa`` / ``batch_fa4``: the batch left-padded, as a processor pads it;
* ``batch_flex`` / ``batch_fa4_packed``: the same batch packed by the engine (``packing="always"``);
* ``one_sdpa`` / ``one_fa4``: its prompts one by one.

Under the FA4 labels both towers attend with FlashAttention-4. Settings: the unmodified model
(no packed modes: it has no packed path) and each of ``--methods`` at ``--ratio`` (scope ``visual``).
Checks in the same run: each packed batch against the padded batch under the same kernel (kept visual
tokens of every sample, last-token logits). With ``--new-tokens N`` every mode is a whole answer
instead: ``generate`` of ``N`` greedy tokens (the prefill, then decoding through the engine), and the
check compares the answers' tokens.

    python eval/bench_image_batch.py --out eval/results/raw/image_batch_qwen2vl7b.json
    python eval/bench_image_batch.py --new-tokens 32 --out eval/results/raw/image_batch_answers_qwen2vl7b.json
    python eval/bench_image_batch.py --smoke     # tiny model on the CPU, SDPA and Flex only
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from batch_runs import (
    KERNEL_ERRORS,
    PACKED_KERNELS,
    UNPACKED,
    guarded_row,
    kept_agreement,
    kept_of,
    kernel,
    measure_modes,
    qwen2_vl_model,
    relative_error,
    version_of,
)
from dash_vl import Halting
from dash_vl.testing import long_prompt, long_prompt_batch
from gpu_timing import add_timing_arguments, print_table, report_run

SMOKE_BATCH = [400, 330, 260, 200]
SMOKE_KERNELS = ["sdpa", "flex"]
"""The smoke run's kernels: FA4 needs a GPU."""
KERNELS = ("sdpa", "flex", "fa4", "fa4_packed")


def answer(model, method: str, ratio: float, label: str, calls: list[dict], new_tokens: int = 0) -> Callable[[], list]:
    """A run: ``calls`` through the whole model under kernel ``label`` (both towers) and the setting's
    halting (``packing="always"`` for a packed label); each call's last-token logits ``(batch, V)``, or,
    where ``new_tokens`` > 0, its greedy answer ``(batch, new_tokens)`` from ``generate`` (prefill and decoding)."""

    def through_model(call: dict) -> torch.Tensor:
        if not new_tokens:
            return model(**call, logits_to_keep=1).logits[:, -1]
        output = model.generate(**call, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        return output[:, call["input_ids"].shape[1] :]

    def run() -> list:
        packing = "always" if label in PACKED_KERNELS else "off"
        halting = Halting(model, method=method, ratio=ratio, packing=packing) if method != "none" else nullcontext()
        with kernel(model, label, towers="both"), halting as entered, torch.no_grad():
            outputs = [through_model(call) for call in calls]
        run.halting = entered
        return outputs

    run.calls = calls
    return run


def setting_row(model, method: str, ratio: float, batch: dict, alone: list[dict], args, device) -> dict:
    """Median ms of every mode of the setting, the best one-by-one time over each batch's, and the packed checks."""
    labels = [label for label in args.kernels if not (label in PACKED_KERNELS and method == "none")]
    runs = {f"batch_{label}": answer(model, method, ratio, label, [batch], args.new_tokens) for label in labels}
    unpacked = [label for label in labels if label not in PACKED_KERNELS]
    runs.update({f"one_{label}": answer(model, method, ratio, label, alone, args.new_tokens) for label in unpacked})
    row = measure_modes(runs, args, device)
    best_one = min(row[f"one_{label}_ms"] for label in unpacked)
    for label in labels:
        row[f"best_one_over_batch_{label}"] = best_one / row[f"batch_{label}_ms"]
    for label in set(labels) & set(UNPACKED):
        packed, padded = runs[f"batch_{label}"], runs[f"batch_{UNPACKED[label]}"]
        got, expected = packed(), padded()
        if args.new_tokens:
            row[f"{label}_token_agree"] = float((got[0] == expected[0]).float().mean())
        else:
            row[f"{label}_rel_err"] = relative_error(got, expected)
        row[f"{label}_kept_agree"] = kept_agreement(kept_of(packed), kept_of(padded))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16384, 12288, 8192, 4096], help="tokens of each image prompt")
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", default=["visionzip", "dash"])
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--new-tokens", type=int, default=0,
                        help="time whole answers of this many greedy tokens (generate) instead of the prefill")
    parser.add_argument("--smoke", action="store_true", help="tiny model and prompts on the CPU, host clock")
    add_timing_arguments(parser, warmup=1, repeats=3)
    args = parser.parse_args()

    began = time.perf_counter()
    if args.smoke:
        args.batch, args.kernels = SMOKE_BATCH, SMOKE_KERNELS
    model, device, dtype = qwen2_vl_model(args.smoke)
    batch = long_prompt_batch("qwen2_vl", model.config, args.batch, device, dtype)
    alone = [long_prompt("qwen2_vl", model.config, length, device, dtype) for length in args.batch]
    settings = [("HF", "none", 0.0)] + [(f"{method} ρ={args.ratio}", method, args.ratio) for method in args.methods]
    rows = [guarded_row(label, lambda: setting_row(model, method, ratio, batch, alone, args, device), device, KERNEL_ERRORS)
            for label, method, ratio in settings]
    checks = {
        "Flex vs SDPA batch: tokens agree / kept": "{flex_token_agree:.4f} / {flex_kept_agree:.4f}",
        "FA4 packed vs FA4 batch: tokens agree / kept": "{fa4_packed_token_agree:.4f} / {fa4_packed_kept_agree:.4f}",
    } if args.new_tokens else {
        "Flex vs SDPA batch: rel err / kept": "{flex_rel_err:.1e} / {flex_kept_agree:.4f}",
        "FA4 packed vs FA4 batch: rel err / kept": "{fa4_packed_rel_err:.1e} / {fa4_packed_kept_agree:.4f}",
    }
    print_table(rows, {
        "setting": "{setting}", "batch SDPA ms": "{batch_sdpa_ms:.1f}", "packed Flex ms": "{batch_flex_ms:.1f}",
        "batch FA4 ms": "{batch_fa4_ms:.1f}", "packed FA4 ms": "{batch_fa4_packed_ms:.1f}",
        "one by one SDPA ms": "{one_sdpa_ms:.1f}", "one by one FA4 ms": "{one_fa4_ms:.1f}",
        "best one / SDPA batch": "{best_one_over_batch_sdpa:.2f}", "best one / Flex": "{best_one_over_batch_flex:.2f}",
        "best one / FA4 batch": "{best_one_over_batch_fa4:.2f}", "best one / FA4 packed": "{best_one_over_batch_fa4_packed:.2f}",
        **checks,
        "error": "{error}",
    })
    report_run(
        rows, args.out, model="Qwen2-VL-7B shapes, random bf16, whole model" if not args.smoke else "tiny",
        command=" ".join(sys.argv), batch=args.batch, visual_tokens=[int((call["input_ids"] == model.config.image_token_id).sum()) for call in alone],
        ratio=args.ratio, methods=args.methods, kernels=args.kernels, new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats,
        flash_attn_4=version_of("flash-attn-4"), seconds=round(time.perf_counter() - began, 1),
    )


if __name__ == "__main__":
    main()

"""FlashAttention-4 under every method (issue 26, part 2): does it run, does it agree, is it faster.

Qwen2-VL-7B language tower shapes, random bf16 weights, on the GPU. Attention kernels, switched on
the language tower's config between runs:

* ``sdpa``: PyTorch's scaled-dot-product attention (HF's default, dash_vl's default);
* ``flex``: the engine's packed path (``HaltingConfig.packing``), compiled FlexAttention; the
  unmodified model has no such path;
* ``fa4``: ``attn_implementation="flash_attention_4"``, FlashAttention's CuTe kernels
  (``flash_attn.cute``, package ``flash-attn-4``), which HF calls through its varlen functions
  wherever a padding mask is given (only attention skips the padding: every linear layer still
  runs on the padded width);
* ``fa4_packed``: the engine's packed path under FA4: the batch's valid tokens end to end, FA4's
  varlen kernel given the samples' cumulative lengths.

Part 1, checks (printed as one table): the unmodified model under FA4 against SDPA; the engine at
ratio 0 under FA4 against the unmodified model under FA4, decoding through FA4 (the same kernel: they
should agree to the last bit) and through the engine's SDPA decode kernels, the engine's default
(rounding apart: compare the first decode step's logits); each method under FA4 against the same
method under SDPA (the kept set and the last-token states); a left-padded mixed batch under FA4 against its prompts one by one under FA4,
and the same batch packed under FA4 against it padded; and, for the batch-1 checks, 16 greedy decode steps after the prefill against the reference's.
VisionZip, which selects inside the vision tower, is checked on the whole model with one image of
about ``--check-length`` tokens: FA4 in the language tower alone, and in both towers, against SDPA
(kept visual tokens, last-token logits, 16 greedy decode steps).

Part 2, timings: batch 1 at ``--lengths`` tokens, each setting's kernels taking turns (medians of
``--repeats`` CUDA-event timings after ``--warmup``); and the mixed batch (``--batch``), padded under
SDPA and FA4 and packed under Flex and FA4, against its prompts one by one under SDPA and FA4.
Random weights make greedy tokens near ties, so the decode agreement of two kernels (bf16 rounding
apart) is low by nature; the same kernel must agree exactly.

    python eval/bench_flash4.py --out eval/results/raw/flash4_qwen2vl7b.json
    python eval/bench_flash4.py --smoke       # tiny shapes on the CPU (FA4 rows then carry its import error)
    python eval/bench_flash4.py --profile fa4_packed   # where the packed batch's time goes at ratio 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch.profiler import ProfilerActivity, profile

from batch_runs import (
    KERNEL_ERRORS,
    KERNEL_IMPLEMENTATIONS,
    PACKED_KERNELS,
    SMOKE_LENGTHS,
    UNPACKED,
    Prompts,
    guarded_row,
    halting_for,
    kept_agreement,
    kept_of,
    kernel,
    measure_modes,
    qwen2_vl_model,
    relative_error,
    version_of,
)
from dash_vl import Halting
from dash_vl.testing import long_prompt
from gpu_timing import add_timing_arguments, cuda_elapsed_ms, print_table, report_run

DECODE_STEPS = 16


def halted(model, method: str, ratio: float, label: str, decode: str = "engine"):
    """The setting's halting under kernel ``label`` (``packing="always"`` for Flex), or a null context
    unmodified; decode ``"model"`` decodes through the model's own kernel (``decode_backends = None``),
    ``"engine"`` through the engine's SDPA decode kernels."""
    packing = "always" if label in PACKED_KERNELS else "off"
    return halting_for(model, method, ratio, decode, packing=packing) or nullcontext()


def prefill(model, method: str, ratio: float, label: str, calls: list[dict]) -> Callable[[], list]:
    """A run: ``calls`` through the language tower under the setting and kernel; each call's last-token states ``(batch, D)``."""
    language_model = model.model.language_model

    def run() -> list:
        with kernel(model, label), halted(model, method, ratio, label) as halting, torch.no_grad():
            states = [language_model(**call, use_cache=True).last_hidden_state[:, -1] for call in calls]
        run.halting = halting  # its reports are built when read, outside the timed run
        return states

    run.calls = calls
    return run


def greedy_decode(
    model, method: str, ratio: float, label: str, input_ids: torch.Tensor, decode: str = "engine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``generate`` after the setting's prefill under kernel ``label``: the ``(batch, DECODE_STEPS)`` greedy
    tokens, and the logits ``(batch, V)`` fp32 of the first decode step (the second token's; both sides of a
    check feed it the same first token wherever their prefills agree on it)."""
    with kernel(model, label), halted(model, method, ratio, label, decode), torch.no_grad():
        output = model.generate(
            input_ids=input_ids, max_new_tokens=DECODE_STEPS, min_new_tokens=DECODE_STEPS, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
        )
    return output.sequences[:, input_ids.shape[1] :], output.logits[1].float()


def check_rows(model, settings, single: Prompts, mixed: Prompts, input_ids: torch.Tensor, device) -> list[dict]:
    """Part 1: FA4 against its references; one row per comparison. A side is ``(method, ratio, kernel, calls)``
    and, optionally, its decode (:func:`halted`)."""

    def compare(label: str, candidate: tuple, reference: tuple, decode: bool = True) -> dict:
        def measure() -> dict:
            got_run, expected_run = prefill(model, *candidate[:4]), prefill(model, *reference[:4])
            got, expected = got_run(), expected_run()
            row = dict(
                rel_err=relative_error(got, expected), max_abs=float((torch.cat(got) - torch.cat(expected)).abs().max()),
                kept_agree=kept_agreement(kept_of(got_run), kept_of(expected_run)),
            )
            if decode:
                (got_tokens, got_step), (tokens, step) = (
                    greedy_decode(model, *side[:3], input_ids, *side[4:]) for side in (candidate, reference)
                )
                row["decode_agree"] = float((got_tokens == tokens).float().mean())
                row["step_rel_err"] = relative_error([got_step], [step])
            return row

        return guarded_row(label, measure, device, KERNEL_ERRORS)

    alone = [single.alone(0)]
    batch, one_by_one = [mixed.batch()], [mixed.alone(sample) for sample in range(len(mixed.lengths))]
    rows = [
        compare("HF: FA4 vs SDPA", ("none", 0.0, "fa4", alone), ("none", 0.0, "sdpa", alone)),
        compare("engine ρ=0 FA4, FA4 decode vs HF FA4", ("dash", 0.0, "fa4", alone, "model"), ("none", 0.0, "fa4", alone)),
        compare("engine ρ=0 FA4, SDPA decode vs HF FA4", ("dash", 0.0, "fa4", alone), ("none", 0.0, "fa4", alone)),
    ]
    rows += [
        compare(f"{label}: FA4 vs SDPA", (method, ratio, "fa4", alone), (method, ratio, "sdpa", alone))
        for label, method, ratio in settings[2:]
    ]
    rows += [
        compare(f"{label}: FA4 padded batch vs one by one", (method, ratio, "fa4", batch), (method, ratio, "fa4", one_by_one), decode=False)
        for label, method, ratio in settings[1:]
    ]
    rows += [
        compare(f"{label}: FA4 packed batch vs padded", (method, ratio, "fa4_packed", batch), (method, ratio, "fa4", batch), decode=False)
        for label, method, ratio in settings[1:]
    ]
    return rows


def visionzip_rows(model, ratio: float, length: int, device, dtype) -> list[dict]:
    """VisionZip at ``ratio`` on the whole model, one image of about ``length`` tokens: FA4 in the
    language tower (``"lm"``) or in both towers (``"both"``) against SDPA in both."""
    inputs = long_prompt("qwen2_vl", model.config, length, device, dtype)

    def side(label: str, towers: str) -> tuple[Callable[[], list], Callable[[], torch.Tensor]]:
        def within(body: Callable[[], object]) -> tuple[Halting, object]:
            """``body()`` under the side's kernels and VisionZip; the halting and what ``body`` returned."""
            with kernel(model, label, towers), Halting(model, method="visionzip", ratio=ratio) as halting, torch.no_grad():
                return halting, body()

        def run() -> list:
            run.halting, logits = within(lambda: model(**inputs).logits[:, -1].float())
            return [logits]

        def decode() -> torch.Tensor:
            _, output = within(lambda: model.generate(
                **inputs, max_new_tokens=DECODE_STEPS, min_new_tokens=DECODE_STEPS, do_sample=False
            ))
            return output[:, inputs["input_ids"].shape[1] :]

        run.calls = [inputs]
        return run, decode

    def compare(towers: str) -> dict:
        (got_run, got_decode), (expected_run, expected_decode) = side("fa4", towers), side("sdpa", "both")
        got, expected = got_run(), expected_run()
        return dict(
            rel_err=relative_error(got, expected), max_abs=float((got[0] - expected[0]).abs().max()),
            kept_agree=kept_agreement(kept_of(got_run), kept_of(expected_run)),
            decode_agree=float((got_decode() == expected_decode()).float().mean()),
        )

    return [
        guarded_row(f"visionzip ρ={ratio}: FA4 ({towers}) vs SDPA, image", lambda towers=towers: compare(towers), device, KERNEL_ERRORS)
        for towers in ("lm", "both")
    ]


def timing_row(model, method: str, ratio: float, calls_of: Callable[[str], list[dict]], args, device) -> dict:
    """Median ms of the setting under every kernel (Flex not for the unmodified model), and SDPA's over each."""
    labels = [label for label in args.kernels if not (label in PACKED_KERNELS and method == "none")]
    runs = {label: prefill(model, method, ratio, label, calls_of(label)) for label in labels}
    row = measure_modes(runs, args, device)
    for label in labels[1:]:
        row[f"sdpa_over_{label}"] = row["sdpa_ms"] / row[f"{label}_ms"]
    return row


def mixed_batch_row(model, method: str, ratio: float, mixed: Prompts, args, device) -> dict:
    """The mixed batch as one batch under each kernel, and its prompts one by one under SDPA and FA4."""
    one_by_one = [mixed.alone(sample) for sample in range(len(mixed.lengths))]
    runs = {f"batch_{label}": prefill(model, method, ratio, label, [mixed.batch()]) for label in args.kernels
            if not (label in PACKED_KERNELS and method == "none")}
    unpacked = [label for label in args.kernels if label not in PACKED_KERNELS]
    runs.update({f"one_{label}": prefill(model, method, ratio, label, one_by_one) for label in unpacked})
    row = measure_modes(runs, args, device)
    best_one = min(row[f"one_{label}_ms"] for label in unpacked)
    for name in runs:
        if name.startswith("batch_"):
            row[f"best_one_over_{name}"] = best_one / row[f"{name}_ms"]
    return row


def profile_mixed(model, mixed: Prompts, label: str, rows: int = 24) -> None:
    """Where the packed batch's time goes beyond its prompts' one by one, the engine at ratio 0: one
    profiled run each (after a warm-up) of the batch packed under ``label`` and of its prompts one by
    one under ``label``'s unpacked kernel; per operator, self CUDA ms of each, sorted by packed minus
    one by one, and the idle GPU time (wall minus kernel time) of each."""
    unpacked = UNPACKED[label]
    runs = {
        "packed": prefill(model, "dash", 0.0, label, [mixed.batch()]),
        "one by one": prefill(model, "dash", 0.0, unpacked, [mixed.alone(sample) for sample in range(len(mixed.lengths))]),
    }
    per_op: dict[str, dict[str, tuple[int, float]]] = {}
    for name, run in runs.items():
        run()
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            wall_ms = cuda_elapsed_ms(run)
        events = profiler.key_averages()
        kernel_ms = sum(event.self_device_time_total for event in events) / 1000
        print(f"{name} ({label if name == 'packed' else unpacked}): {wall_ms:.1f} ms wall, {kernel_ms:.1f} ms of kernels, "
              f"{wall_ms - kernel_ms:.1f} ms idle GPU", flush=True)
        per_op[name] = {event.key: (event.count, event.self_device_time_total / 1000) for event in events}
    names = set(per_op["packed"]) | set(per_op["one by one"])
    deltas = {op: per_op["packed"].get(op, (0, 0.0))[1] - per_op["one by one"].get(op, (0, 0.0))[1] for op in names}
    print("| op | packed calls | packed ms | one-by-one calls | one-by-one ms | packed − one by one ms |\n|---|---|---|---|---|---|")
    for op in sorted(names, key=lambda op: -abs(deltas[op]))[:rows]:
        (packed_calls, packed_ms), (one_calls, one_ms) = (per_op[name].get(op, (0, 0.0)) for name in per_op)
        print(f"| {op[:80]} | {packed_calls} | {packed_ms:.2f} | {one_calls} | {one_ms:.2f} | {deltas[op]:+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768], help="batch-1 prompt lengths")
    parser.add_argument("--batch", type=int, nargs="+", default=[16384, 12288, 8192, 4096], help="the mixed batch")
    parser.add_argument("--check-length", type=int, default=4096, help="tokens of the part-1 prompt")
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", default=["dash", "fastv", "dart"])
    parser.add_argument("--kernels", nargs="+", default=list(KERNEL_IMPLEMENTATIONS), choices=tuple(KERNEL_IMPLEMENTATIONS),
                        help="sdpa first: the ratios are SDPA's time over each other kernel's")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--visionzip", action="store_true", help="also check VisionZip under FA4 on the whole model")
    parser.add_argument("--smoke", action="store_true", help="tiny model and prompts on the CPU, host clock")
    parser.add_argument("--profile", choices=PACKED_KERNELS, default=None,
                        help="only profile the mixed batch at ratio 0, packed under this kernel, against one by one (GPU)")
    add_timing_arguments(parser, warmup=1, repeats=3)
    args = parser.parse_args()

    began = time.perf_counter()
    if args.smoke:
        args.lengths, args.batch, args.check_length = [SMOKE_LENGTHS[0]], list(SMOKE_LENGTHS), SMOKE_LENGTHS[0]
    model, device, dtype = qwen2_vl_model(args.smoke)
    hidden_size = model.model.language_model.config.hidden_size
    settings = [("HF", "none", 0.0), ("engine ρ=0", "dash", 0.0)] + [
        (f"{method} ρ={args.ratio}", method, args.ratio) for method in args.methods
    ]
    generator = torch.Generator(device=device).manual_seed(1)
    vocab = model.model.language_model.config.vocab_size
    input_ids = torch.randint(min(1000, vocab // 2), min(20000, vocab), (1, args.check_length), device=device, generator=generator)
    mixed = Prompts(args.batch, hidden_size, device, dtype)
    if args.profile is not None:
        with torch.no_grad():
            profile_mixed(model, mixed, args.profile)
        return

    rows = check_rows(model, settings, Prompts([args.check_length], hidden_size, device, dtype), mixed, input_ids, device)
    if args.visionzip:
        rows += visionzip_rows(model, args.ratio, args.check_length, device, dtype)
    print_table(rows, {
        "check": "{setting}", "rel err": "{rel_err:.1e}", "max abs": "{max_abs:.2e}", "kept agree": "{kept_agree:.4f}",
        "decode agree (16 steps)": "{decode_agree:.3f}", "decode step 1 rel err": "{step_rel_err:.1e}", "error": "{error}",
    })
    if not args.skip_timing:
        for length in args.lengths:
            single = Prompts([length], hidden_size, device, dtype)
            timed = [
                guarded_row(label, lambda: dict(T=length, **timing_row(model, method, ratio, lambda _: [single.alone(0)], args, device)), device, KERNEL_ERRORS)
                for label, method, ratio in settings
            ]
            print_table(timed, {
                "setting": "{setting}", "T": "{T}", "SDPA ms": "{sdpa_ms:.1f}", "Flex ms": "{flex_ms:.1f}", "FA4 ms": "{fa4_ms:.1f}",
                "FA4 packed ms": "{fa4_packed_ms:.1f}", "SDPA/Flex": "{sdpa_over_flex:.2f}", "SDPA/FA4": "{sdpa_over_fa4:.2f}",
                "SDPA/FA4 packed": "{sdpa_over_fa4_packed:.2f}", "error": "{error}",
            })
            rows += timed
        batched = [guarded_row(label, lambda: mixed_batch_row(model, method, ratio, mixed, args, device), device, KERNEL_ERRORS)
                   for label, method, ratio in settings]
        print_table(batched, {
            "setting": "{setting}", "batch SDPA ms": "{batch_sdpa_ms:.1f}", "packed Flex ms": "{batch_flex_ms:.1f}",
            "batch FA4 ms": "{batch_fa4_ms:.1f}", "packed FA4 ms": "{batch_fa4_packed_ms:.1f}",
            "one by one SDPA ms": "{one_sdpa_ms:.1f}", "one by one FA4 ms": "{one_fa4_ms:.1f}",
            "best one / Flex": "{best_one_over_batch_flex:.2f}", "best one / FA4 batch": "{best_one_over_batch_fa4:.2f}",
            "best one / FA4 packed": "{best_one_over_batch_fa4_packed:.2f}",
            "error": "{error}",
        })
        rows += batched
    report_run(
        rows, args.out, model="Qwen2-VL-7B language tower shapes, random bf16" if not args.smoke else "tiny",
        command=" ".join(sys.argv), lengths=args.lengths, batch=args.batch, check_length=args.check_length,
        ratio=args.ratio, methods=args.methods, kernels=args.kernels, warmup=args.warmup, repeats=args.repeats,
        flash_attn_4=version_of("flash-attn-4"), cutlass_dsl=version_of("nvidia-cutlass-dsl-libs-cu13"),
        seconds=round(time.perf_counter() - began, 1),
    )


if __name__ == "__main__":
    main()

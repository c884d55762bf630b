"""Halting with the model split over 2 GPUs (accelerate ``device_map``), against the same model on one.

Qwen2-VL-7B's shapes with random bf16 weights: the vision tower, embeddings and the first half of
the decoder layers on ``cuda:0``, the rest, the final norm and the LM head on ``cuda:1``
(accelerate's hooks move activations between them). For each method the split model's
last-token logits and kept count are compared with the single-GPU model's on the same prompt
(one image, ``dash_vl.testing.long_prompt``), and both whole-model forwards are timed (median of
``--repeats`` after ``--warmup``, wall clock after ``cuda.synchronize`` on both devices).

    python eval/bench_device_map.py --length 16384 --ratio 0.9 --out eval/results/raw/device_map_qwen2vl7b.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from accelerate import dispatch_model

from dash_vl import Halting
from dash_vl.testing import full_size_config, long_prompt, random_model
from gpu_timing import add_timing_arguments, print_table, report_run


def split_map(model, first_gpu_layers: int | None = None) -> dict[str, int]:
    """Module name -> GPU: the vision tower, the embeddings and decoder layers ``[0, first_gpu_layers)``
    (default: the first half) on 0; the other layers, the final norm and the LM head on 1."""
    language_model = model.model.language_model
    layers = len(language_model.layers)
    first_gpu_layers = layers // 2 if first_gpu_layers is None else first_gpu_layers
    device_map = {f"model.{name}": 0 for name, _ in model.model.named_children() if name != "language_model"}
    for name, _ in language_model.named_children():
        if name != "layers":
            device_map[f"model.language_model.{name}"] = 1 if name == "norm" else 0
    for index in range(layers):
        device_map[f"model.language_model.layers.{index}"] = 0 if index < first_gpu_layers else 1
    device_map["lm_head"] = 1
    return device_map


def wall_median_ms(run, warmup: int, repeats: int) -> float:
    """Median wall time (ms) of ``run`` with every GPU synchronised around it."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        for device in range(torch.cuda.device_count()):
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        for device in range(torch.cuda.device_count()):
            torch.cuda.synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", default=["none", "dash", "fastv", "dart", "visionzip"])
    parser.add_argument("--first-gpu-layers", type=int, default=None,
                        help="decoder layers on GPU 0 (default: half); DASH decides at layer 11 of 28")
    add_timing_arguments(parser, warmup=1)
    args = parser.parse_args()
    if torch.cuda.device_count() < 2:
        parser.error("needs 2 GPUs")

    single = random_model(full_size_config("qwen2_vl"), dtype=torch.bfloat16, device="cuda:0")
    split = dispatch_model(copy.deepcopy(single).to("cpu"), device_map=split_map(single, args.first_gpu_layers))
    inputs = long_prompt("qwen2_vl", single.config, args.length, torch.device("cuda:0"), torch.bfloat16)
    rows = []
    with torch.no_grad():
        for method in args.methods:
            measured = {}
            for name, model in (("single", single), ("split", split)):
                halting = Halting(model, method=method, ratio=args.ratio) if method != "none" else None
                if halting is not None:
                    halting.enable()
                run = lambda: model(**inputs, use_cache=True, logits_to_keep=1).logits  # noqa: E731
                logits = run()[0, -1].float().cpu()
                milliseconds = wall_median_ms(run, args.warmup, args.repeats)
                kept = halting.last_report.kept_tokens_per_layer[-1][0] if halting else inputs["input_ids"].shape[1]
                if halting is not None:
                    halting.disable()
                measured[name] = (logits, milliseconds, kept)
            (single_logits, single_ms, single_kept), (split_logits, split_ms, split_kept) = measured["single"], measured["split"]
            rows.append(dict(
                T=inputs["input_ids"].shape[1], method=method, ratio=args.ratio if method != "none" else 0.0,
                kept_single=single_kept, kept_split=split_kept,
                max_abs_logit_difference=float((single_logits - split_logits).abs().max()),
                same_top_token=bool(single_logits.argmax() == split_logits.argmax()),
                single_ms=single_ms, split_ms=split_ms,
            ))
            print(json.dumps(rows[-1]), flush=True)

    print_table(rows, {
        "T": "{T}", "method": "{method}", "ρ": "{ratio}", "kept (1 GPU / 2 GPUs)": "{kept_single} / {kept_split}",
        "max |Δ logit|": "{max_abs_logit_difference:.3g}", "same top token": "{same_top_token}",
        "1 GPU ms": "{single_ms:.1f}", "2 GPUs ms": "{split_ms:.1f}",
    })
    report_run(rows, args.out, warmup=args.warmup, repeats=args.repeats, family="qwen2_vl", gpus=torch.cuda.device_count(),
               first_gpu_layers=args.first_gpu_layers)


if __name__ == "__main__":
    main()

"""Time to first token of a whole 7B/8B VLM (vision encoder + projector + language model) under
every method (GPU).

Random bf16 weights with the shapes of ``--family``'s public checkpoint (Qwen2-VL-7B-Instruct by
default, llava-onevision-qwen2-7b-ov-hf, InternVL3-8B-hf), SDPA, batch 1. The prompt
(``dash_vl.random_models.long_prompt``) is 64 text tokens, the visual tokens of one image
(Qwen2-VL: one patch grid of ``≈ T - 130`` tokens) or one video (LLaVA-OneVision: 196 tokens a
frame; InternVL: 256 a frame plus its ``FrameN: <img>``/``</img>`` text) with random pixels, and
64 text tokens. One timed call is the model's forward with ``logits_to_keep=1`` (what
``generate`` runs for its first token): encoder, projector, prefill, last-token logits. Median of
``--repeats`` CUDA-event timings after ``--warmup``; then one more call for peak GPU memory and the
KV-cache bytes it leaves. VisionZip's encoder-side scoring runs here (its recorder hooks the
encoder), unlike in ``bench_methods.py``.

    python eval/bench_ttft.py --family llava_onevision --lengths 4096 16384 --out eval/results/ttft_llava_onevision_7b.json
"""

from __future__ import annotations

import argparse
import json

import torch

from dash_vl import Halting
from dash_vl.random_models import full_size_config, long_prompt, random_model
from gpu_timing import add_timing_arguments, measure, print_table, report_run

FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "internvl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.667, 0.9])
    parser.add_argument("--methods", nargs="+", default=["dash", "fastv", "dart", "visionzip"])
    add_timing_arguments(parser)
    args = parser.parse_args()

    device = torch.device("cuda")
    model = random_model(full_size_config(args.family), dtype=torch.bfloat16, device=device)
    rows = []
    with torch.no_grad():
        for length in args.lengths:
            inputs = long_prompt(args.family, model.config, length, device, torch.bfloat16)
            prompt_tokens = inputs["input_ids"].shape[1]
            run = lambda: model(**inputs, use_cache=True, logits_to_keep=1)  # noqa: E731
            settings = [("none", 0.0)] + [(method, ratio) for method in args.methods for ratio in args.ratios]
            full_ms = None
            for method, ratio in settings:
                halting = Halting(model, method=method, ratio=ratio) if method != "none" else None
                if halting is not None:
                    halting.enable()
                measured = measure(run, args.warmup, args.repeats)
                if halting is not None:
                    halting.disable()
                full_ms = full_ms or measured["ms"]
                report = halting.last_report if halting is not None else None
                rows.append(dict(
                    T=prompt_tokens, method=method, ratio=ratio,
                    kept=report.kept_tokens_per_layer[-1][0] if report else prompt_tokens,
                    relative_flops=report.relative_flops if report else 1.0,
                    ttft_ms=measured["ms"], speedup=full_ms / measured["ms"], peak_gib=measured["peak_gib"],
                    kv_mib=measured["kv_mib"],
                ))
                print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()

    print_table(rows, {
        "T": "{T}", "method": "{method}", "ρ": "{ratio}", "kept": "{kept}", "rel. LM FLOPs": "{relative_flops:.3f}",
        "TTFT ms": "{ttft_ms:.1f}", "speedup": "{speedup:.2f}", "peak GiB": "{peak_gib:.2f}", "KV MiB": "{kv_mib:.0f}",
    })
    report_run(rows, args.out, warmup=args.warmup, repeats=args.repeats, family=args.family, batch=1)


if __name__ == "__main__":
    main()

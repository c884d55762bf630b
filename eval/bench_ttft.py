"""Time to first token of a whole 7B/8B VLM (vision encoder + projector + language model) under
every method (GPU).

Random bf16 weights with the shapes of ``--family``'s public checkpoint (Qwen2-VL-7B-Instruct by
default, Qwen2.5-VL-7B-Instruct, llava-onevision-qwen2-7b-ov-hf, InternVL3-8B-hf,
llava-1.5-7b-hf, llava-v1.6-mistral-7b-hf, Qwen3-VL-8B-Instruct, Qwen3.5-27B's language model: every family of
``dash_vl.testing.FAMILIES``),
SDPA, batch 1. The prompt (``dash_vl.testing.long_prompt``) is 64 text tokens, the visual
tokens of one image (Qwen2-VL, Qwen3-VL, Qwen3.5: one patch grid of ``≈ T - 130`` tokens), one video
(LLaVA-OneVision: 196 tokens a frame; InternVL: 256 a frame plus its ``FrameN: <img>``/``</img>``
text) or several images (LLaVA-1.5: 576 tokens a 336-px image, 28 images at T = 16 384;
LLaVA-NeXT: 2 928 a 672 x 672 image of five CLIP tiles, five images and text up to T) with random
pixels, and 64 or more text tokens. One timed call is the model's forward with
``logits_to_keep=1`` (what ``generate`` runs for its first token): encoder, projector, prefill,
last-token logits. Median of ``--repeats`` CUDA-event timings after ``--warmup``; then one more
call for peak GPU memory and the KV-cache bytes it leaves. VisionZip's encoder-side scoring runs
here (its recorder hooks the encoder; on LLaVA-1.5 it selects and merges before the projector),
unlike in ``bench_methods.py``.

    python eval/bench_ttft.py --family llava_onevision --lengths 4096 16384 --out eval/results/raw/ttft_llava_onevision_7b.json
    python eval/bench_ttft.py --family llava --smoke    # tiny model on the CPU, host clock: proves the script runs
"""

from __future__ import annotations

import argparse
import json

import torch

from dash_vl import Halting
from dash_vl.testing import FAMILIES, full_size_config, long_prompt, random_model, tiny_config, tiny_processor
from gpu_timing import add_timing_arguments, cuda_elapsed_ms, host_elapsed_ms, measure, print_table, report_run

SMOKE_LENGTH = 300
"""Prompt tokens of a ``--smoke`` run."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_vl", choices=sorted(FAMILIES))
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.667, 0.9])
    parser.add_argument("--methods", nargs="+", default=["dash", "fastv", "dart", "visionzip"])
    parser.add_argument("--smoke", action="store_true", help=f"tiny model on the CPU, {SMOKE_LENGTH}-token prompt, host clock")
    add_timing_arguments(parser)
    args = parser.parse_args()

    if args.smoke:
        device, dtype, clock, lengths = torch.device("cpu"), torch.float32, host_elapsed_ms, [SMOKE_LENGTH]
        config = tiny_config(args.family, tiny_processor(args.family).tokenizer)
    else:
        device, dtype, clock, lengths = torch.device("cuda"), torch.bfloat16, cuda_elapsed_ms, args.lengths
        config = full_size_config(args.family)
    model = random_model(config, dtype=dtype, device=device)
    rows = []
    with torch.no_grad():
        for length in lengths:
            inputs = long_prompt(args.family, model.config, length, device, dtype)
            prompt_tokens = inputs["input_ids"].shape[1]
            run = lambda: model(**inputs, use_cache=True, logits_to_keep=1)  # noqa: E731
            settings = [("none", 0.0)] + [(method, ratio) for method in args.methods for ratio in args.ratios]
            full_ms = None
            for method, ratio in settings:
                halting = Halting(model, method=method, ratio=ratio) if method != "none" else None
                if halting is not None:
                    halting.enable()
                measured = measure(run, args.warmup, args.repeats, elapsed_ms=clock)
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
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print_table(rows, {
        "T": "{T}", "method": "{method}", "ρ": "{ratio}", "kept": "{kept}", "rel. LM FLOPs": "{relative_flops:.3f}",
        "TTFT ms": "{ttft_ms:.1f}", "speedup": "{speedup:.2f}", "peak GiB": "{peak_gib:.2f}", "KV MiB": "{kv_mib:.0f}",
    })
    report_run(rows, args.out, warmup=args.warmup, repeats=args.repeats, family=args.family, batch=1, smoke=args.smoke)


if __name__ == "__main__":
    main()

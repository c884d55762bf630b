"""Time to first token of the whole Qwen2-VL-7B (vision encoder + merger + language model) under
every method (GPU).

Random bf16 weights with the public checkpoint's shapes, SDPA, batch 1. The prompt is 64 text
tokens, one image whose patch grid gives ``≈ T - 130`` visual tokens (``pixel_values`` random,
``image_grid_thw`` real, so M-RoPE positions and the ViT's work are those of such an image), and
64 text tokens. One timed call is the model's forward with ``logits_to_keep=1`` (what
``generate`` runs for its first token): encoder, merger, prefill, last-token logits. Median of
``--repeats`` CUDA-event timings after ``--warmup``; peak GPU memory of one more call. VisionZip's
encoder-side scoring runs here (its recorder hooks the ViT), unlike in ``bench_methods.py``.

    python eval/bench_ttft.py --lengths 4096 16384 --ratios 0.667 0.9 --out eval/results/ttft_qwen2vl7b.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math

import torch
from transformers import Qwen2VLForConditionalGeneration

from dash_vl import Halting
from dash_vl.random_models import full_size_config, random_model
from gpu_timing import add_timing_arguments, print_table, cuda_median_ms, report_run

TEXT_AROUND = 64
# transformers releases after 5.17 take the processor's token types (1: image) to build M-RoPE ids
PASSES_TOKEN_TYPES = "mm_token_type_ids" in inspect.signature(Qwen2VLForConditionalGeneration.forward).parameters


def image_prompt(config, length: int, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Model inputs for one image of about ``length - 130`` visual tokens between 64-token texts."""
    vision = config.vision_config
    patch_features = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    visual = length - 2 * TEXT_AROUND - 2
    rows = math.isqrt(visual)
    cols = visual // rows
    tokens = rows * cols
    generator = torch.Generator(device=device).manual_seed(length)
    high = min(20000, config.vision_start_token_id)  # ordinary text ids, below the special tokens
    text = lambda: torch.randint(high // 2, high, (TEXT_AROUND,), device=device, generator=generator)  # noqa: E731
    ids = torch.cat([
        text(), torch.tensor([config.vision_start_token_id], device=device),
        torch.full((tokens,), config.image_token_id, device=device),
        torch.tensor([config.vision_end_token_id], device=device), text(),
    ])[None]
    patches = 4 * tokens  # before the 2 x 2 merge
    newer = {"mm_token_type_ids": (ids == config.image_token_id).long()} if PASSES_TOKEN_TYPES else {}
    return dict(
        **newer, input_ids=ids, attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(patches, patch_features, device=device, generator=generator).to(dtype),
        image_grid_thw=torch.tensor([[1, 2 * rows, 2 * cols]], device=device),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.667, 0.9])
    parser.add_argument("--methods", nargs="+", default=["dash", "fastv", "dart", "visionzip"])
    add_timing_arguments(parser)
    args = parser.parse_args()

    device = torch.device("cuda")
    model = random_model(full_size_config("qwen2_vl"), dtype=torch.bfloat16, device=device)
    rows = []
    with torch.no_grad():
        for length in args.lengths:
            inputs = image_prompt(model.config, length, device)
            run = lambda: model(**inputs, use_cache=True, logits_to_keep=1)  # noqa: E731
            settings = [("none", 0.0)] + [(method, ratio) for method in args.methods for ratio in args.ratios]
            full_ms = None
            for method, ratio in settings:
                halting = Halting(model, method=method, ratio=ratio) if method != "none" else None
                if halting is not None:
                    halting.enable()
                milliseconds = cuda_median_ms(run, args.warmup, args.repeats)
                torch.cuda.reset_peak_memory_stats()
                run()
                peak = torch.cuda.max_memory_allocated() / 2**30
                if halting is not None:
                    halting.disable()
                full_ms = full_ms or milliseconds
                report = halting.last_report if halting is not None else None
                rows.append(dict(
                    T=inputs["input_ids"].shape[1], method=method, ratio=ratio,
                    kept=report.kept_tokens_per_layer[-1][0] if report else inputs["input_ids"].shape[1],
                    relative_flops=report.relative_flops if report else 1.0,
                    ttft_ms=milliseconds, speedup=full_ms / milliseconds, peak_gib=peak,
                ))
                print(json.dumps(rows[-1]), flush=True)
            torch.cuda.empty_cache()

    print_table(rows, {
        "T": "{T}", "method": "{method}", "ρ": "{ratio}", "kept": "{kept}", "rel. LM FLOPs": "{relative_flops:.3f}",
        "TTFT ms": "{ttft_ms:.1f}", "speedup": "{speedup:.2f}", "peak GiB": "{peak_gib:.2f}",
    })
    report_run(rows, args.out, warmup=args.warmup, repeats=args.repeats, family="qwen2_vl", batch=1)


if __name__ == "__main__":
    main()

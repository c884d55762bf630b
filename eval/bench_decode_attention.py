"""One decode step's attention alone: SDPA over a cache of S keys, maskless (HF's path without padding,
GQA in the kernel) against an explicit padding mask (HF's path with padding: K/V repeated to every
query head first), Qwen2-VL-7B heads (28 query, 4 KV, head size 128), bf16, CUDA-event medians.

Then per SDPA backend (cuDNN, flash, memory-efficient), maskless, as decoding calls it: the cache
one key longer at every call, so no two calls have the same shape. Host µs per call (the host
clock around the call, no synchronisation: what the host spends launching) and GPU µs per call.

    python eval/bench_decode_attention.py --lengths 3277 4096 16384 32768 --batch 1 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from gpu_timing import add_timing_arguments, cuda_medians_ms, print_table, report_run

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}


def growing_cache_us(backend: SDPBackend, batch: int, length: int, calls: int) -> tuple[float, float]:
    """Median host µs per call and mean GPU µs per call over ``calls`` decode-like calls, the cache
    growing by one key each call (a new shape every time)."""
    generator = torch.Generator(device="cuda").manual_seed(length)
    query = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
    key, value = (
        torch.randn(batch, KV_HEADS, length + 2 * calls, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
        for _ in range(2)
    )
    host_us = []
    with sdpa_kernel([backend]):
        for offset in (0, calls):  # the first pass warms up, at other shapes than the timed one
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for call in range(calls):
                size = length + offset + call
                began = time.perf_counter()
                scaled_dot_product_attention(query, key[:, :, :size], value[:, :, :size], enable_gqa=True)
                host_us.append(1e6 * (time.perf_counter() - began))
            end.record()
            torch.cuda.synchronize()
    return statistics.median(host_us[calls:]), 1000 * start.elapsed_time(end) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[3277, 4096, 16384, 32768])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    add_timing_arguments(parser, warmup=5, repeats=50)
    args = parser.parse_args()
    rows = []
    for batch in args.batch:
        for length in args.lengths:
            generator = torch.Generator(device="cuda").manual_seed(length)
            query = torch.randn(batch, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
            key, value = (
                torch.randn(batch, KV_HEADS, length, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
                for _ in range(2)
            )
            mask = torch.ones(batch, 1, 1, length, dtype=torch.bool, device="cuda")
            mask[1:, ..., : length // 4] = False

            def masked() -> torch.Tensor:
                repeat = HEADS // KV_HEADS
                return scaled_dot_product_attention(
                    query, key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1), attn_mask=mask
                )

            measured = cuda_medians_ms(
                dict(
                    maskless=lambda: scaled_dot_product_attention(query, key, value, enable_gqa=True),
                    masked=masked,
                ),
                args.warmup,
                args.repeats,
            )
            kv_bytes = 2 * key.nbytes
            row = dict(
                batch=batch, S=length, maskless_us=1000 * measured["maskless"], masked_us=1000 * measured["masked"],
                maskless_tb_s=kv_bytes / measured["maskless"] / 1e9,
            )
            for name, backend in BACKENDS.items():
                try:
                    row[f"{name}_host_us"], row[f"{name}_gpu_us"] = growing_cache_us(backend, batch, length, calls=64)
                except RuntimeError as error:  # no kernel of this backend for these inputs
                    print(f"{name}: {str(error).splitlines()[0]}")
                    row[f"{name}_host_us"] = row[f"{name}_gpu_us"] = float("nan")
            rows.append(row)
            print(row, flush=True)
    print_table(
        rows,
        {"batch": "{batch}", "S": "{S}", "maskless µs": "{maskless_us:.1f}", "masked µs": "{masked_us:.1f}",
         "maskless KV TB/s": "{maskless_tb_s:.2f}",
         **{f"{name} host/GPU µs, growing": f"{{{name}_host_us:.0f}} / {{{name}_gpu_us:.0f}}" for name in BACKENDS}},
    )
    report_run(rows, args.out, heads=HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM, warmup=args.warmup, repeats=args.repeats)


if __name__ == "__main__":
    main()

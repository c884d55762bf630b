"""Is FlashAttention-4's varlen kernel slower than one dense call per prompt over the same tokens? (issue 26)

A packed prefill attends each prompt of the batch document-causally. The engine gives FA4 the
whole packed sequence with the prompts' cumulative lengths (one varlen call a layer); the
alternative is one dense causal call per prompt on its contiguous slice, either concatenating the
outputs or writing each into its slice of one output (FA4's ``out=``, a private argument of
``flash_attn.cute.interface._flash_attn_fwd``). This probe times the three at the kernel level,
Qwen2-VL-7B's attention shapes (28 query heads, 4 key/value heads, head dim 128, bf16), taking
turns (:func:`gpu_timing.cuda_medians_ms`), in two memory layouts of the inputs: token-major, and
head-major as HF's rotary leaves them. It checks the three agree to the last bit first.

    python eval/probe_flash4_runs.py --out eval/results/raw/probe_flash4_runs_h200.json
"""

from __future__ import annotations

import argparse

import torch

from gpu_timing import add_timing_arguments, cuda_medians_ms, print_table, report_run

HEADS, KV_HEADS, HEAD_DIM = 28, 4, 128
BATCHES = {"mixed 16k/12k/8k/4k": [16384, 12288, 8192, 4096], "mixed 1.6k/1.2k/0.8k/0.4k": [1638, 1228, 819, 409], "16k": [16384]}


def packed_inputs(lengths: list[int], head_major: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(N, heads, head_dim)`` queries and ``(N, kv_heads, head_dim)`` keys and values, bf16 on the GPU."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    tokens = sum(lengths)
    parts = [
        torch.randn(tokens, heads, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=generator)
        for heads in (HEADS, KV_HEADS, KV_HEADS)
    ]
    if head_major:
        parts = [part.transpose(0, 1).contiguous().transpose(0, 1) for part in parts]
    return tuple(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_timing_arguments(parser, warmup=3, repeats=20)
    args = parser.parse_args()
    from flash_attn.cute import flash_attn_func, flash_attn_varlen_func
    from flash_attn.cute.interface import _flash_attn_fwd

    rows = []
    for batch, lengths in BATCHES.items():
        for head_major in (False, True):
            query, key, value = packed_inputs(lengths, head_major)
            bounds = [0, *torch.tensor(lengths).cumsum(0).tolist()]
            cumulative = torch.tensor(bounds, device="cuda", dtype=torch.int32)
            runs = list(zip(bounds, bounds[1:]))

            def varlen():
                return flash_attn_varlen_func(
                    query, key, value, cu_seqlens_q=cumulative, cu_seqlens_k=cumulative,
                    max_seqlen_q=max(lengths), max_seqlen_k=max(lengths), causal=True,
                )[0]

            def per_prompt_cat():
                return torch.cat([flash_attn_func(query[None, a:b], key[None, a:b], value[None, a:b], causal=True)[0][0] for a, b in runs])

            def per_prompt_out():
                output = torch.empty_like(query)[None]
                for a, b in runs:
                    _flash_attn_fwd(query[None, a:b], key[None, a:b], value[None, a:b], causal=True, out=output[:, a:b])
                return output[0]

            reference = varlen()
            agree = all(torch.equal(reference, run()) for run in (per_prompt_cat, per_prompt_out))
            times = cuda_medians_ms(
                {"varlen": varlen, "cat": per_prompt_cat, "out": per_prompt_out}, args.warmup, args.repeats
            )
            rows.append(dict(batch=batch, layout="head-major" if head_major else "token-major", agree=agree, **times,
                             ratio=times["out"] / times["varlen"]))
    print_table(rows, {
        "batch": "{batch}", "input layout": "{layout}", "bit-equal": "{agree}", "varlen ms": "{varlen:.3f}",
        "per prompt + cat ms": "{cat:.3f}", "per prompt, out= ms": "{out:.3f}", "out= ÷ varlen": "{ratio:.3f}",
    })
    report_run(rows, args.out, warmup=args.warmup, repeats=args.repeats)


if __name__ == "__main__":
    main()

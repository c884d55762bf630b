"""Prefill time of a Qwen2-VL-7B-shaped language tower: unmodified, DASH engine, and the ideal.

Random bf16 weights (speed does not depend on weight values), SDPA, batch 1, on a GPU.
For each prompt length T, the same run times:
  * ``full``: the unmodified HF language model;
  * ``dash``: the same model under :class:`dash_vl.Halting` (scoring, selection, gathers,
    compact cache, frozen-state scatter: everything the engine does);
  * ``ideal``: layers ``< l_s`` on T tokens, then layers ``>= l_s`` on a precomputed random
    subset of ``K = T - floor(ρ(T-1))`` tokens (HF layers called directly, no scoring, no bookkeeping);
  * ``floor``: the ideal plus what DASH cannot skip at the same selection: layer ``l_s``'s attention
    sub-layer over all T tokens (Δattn needs every token's update) and the final norm over all T
    (the output holds every token's state); see ``gpu_timing.floor_prefill``. ``floor/ideal`` is
    the most of the ideal's speed any DASH engine can reach, ``DASH/floor`` what this one delivers;
  * ``select``: scoring + selection alone on a ``(1, T, D)`` update, to show its share.
Each time is the median of ``--repeats`` CUDA-event timings after ``--warmup`` runs; ``ideal``,
``floor`` and ``dash`` take turns within every repeat, in reverse order every other repeat.

    python eval/bench_prefill.py --lengths 4096 16384 32768 --ratios 0.667 0.9 0.96 0.99 --out eval/results/raw/prefill.json
"""

from __future__ import annotations

import argparse
import json

import torch

from dash_vl import Halting
from dash_vl.engine.active_set import compact_layout
from dash_vl.methods import DeltaAttention, halted_count
from dash_vl.testing import full_size_config, random_model
from gpu_timing import (
    FixedDecisionInputs,
    add_timing_arguments,
    cuda_median_ms,
    cuda_medians_ms,
    floor_prefill,
    ideal_prefill,
    print_table,
    report_run,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.667, 0.9, 0.96, 0.99])
    parser.add_argument("--start-layer", type=int, default=11)
    add_timing_arguments(parser)
    args = parser.parse_args()

    device = torch.device("cuda")
    model = random_model(full_size_config("qwen2_vl"), dtype=torch.bfloat16, device=device)
    language_model = model.model.language_model
    hidden_size = language_model.config.hidden_size
    num_layers = len(language_model.layers)
    rows = []
    with torch.no_grad():
        for length in args.lengths:
            generator = torch.Generator(device=device).manual_seed(length)
            embeds = torch.randn(1, length, hidden_size, device=device, dtype=torch.bfloat16, generator=generator)
            rope_ids = torch.arange(length, device=device).view(1, 1, -1).expand(3, 1, -1)
            run_full = lambda: language_model(inputs_embeds=embeds, position_ids=rope_ids, use_cache=True)  # noqa: E731
            full_ms = cuda_median_ms(run_full, args.warmup, args.repeats)
            for ratio in args.ratios:
                keep = length - halted_count(ratio, length - 1)
                keep_index = torch.randperm(length - 1, device=device, generator=generator)[: keep - 1]
                keep_index = torch.cat([keep_index, torch.tensor([length - 1], device=device)]).sort().values[None]
                with Halting(model, ratio=ratio, start_layer=args.start_layer) as halting:
                    # ideal_prefill and floor_prefill call the layers directly, so the engine does not touch them
                    measured = cuda_medians_ms(
                        dict(
                            ideal=lambda: ideal_prefill(language_model, embeds, rope_ids, args.start_layer, keep_index),
                            floor=lambda: floor_prefill(language_model, embeds, rope_ids, args.start_layer, keep_index),
                            dash=run_full,
                        ),
                        args.warmup,
                        args.repeats,
                    )
                ideal_ms, floor_ms, dash_ms = measured["ideal"], measured["floor"], measured["dash"]
                report = halting.last_report
                update = torch.randn_like(embeds)
                valid = torch.ones(1, length, dtype=torch.bool, device=device)
                eligible = valid.clone()
                eligible[:, -1] = False
                select_ms = cuda_median_ms(
                    lambda: compact_layout(DeltaAttention().keep(FixedDecisionInputs(embeds, valid, eligible, update), ratio)),
                    args.warmup,
                    args.repeats,
                )
                theory = num_layers / (args.start_layer + (num_layers - args.start_layer) * keep / length)
                row = dict(
                    T=length, ratio=ratio, kept=report.kept_tokens_per_layer[-1][0], full_ms=full_ms,
                    ideal_ms=ideal_ms, floor_ms=floor_ms, dash_ms=dash_ms, select_ms=select_ms,
                    ideal_speedup=full_ms / ideal_ms, dash_speedup=full_ms / dash_ms,
                    dash_over_ideal=ideal_ms / dash_ms, floor_over_ideal=ideal_ms / floor_ms,
                    dash_over_floor=floor_ms / dash_ms, select_pct=100 * select_ms / dash_ms,
                    linear_theory=theory, relative_flops=report.relative_flops,
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
            torch.cuda.empty_cache()

    print_table(
        rows,
        {
            "T": "{T}", "ρ": "{ratio}", "kept": "{kept}", "full ms": "{full_ms:.1f}", "ideal ms": "{ideal_ms:.1f}",
            "floor ms": "{floor_ms:.1f}", "DASH ms": "{dash_ms:.1f}", "ideal ×": "{ideal_speedup:.2f}",
            "DASH ×": "{dash_speedup:.2f}", "DASH/ideal": "{dash_over_ideal:.3f}", "floor/ideal": "{floor_over_ideal:.3f}",
            "DASH/floor": "{dash_over_floor:.3f}", "select %": "{select_pct:.2f}", "theory ×": "{linear_theory:.2f}",
            "rel. FLOPs": "{relative_flops:.3f}",
        },
    )
    report_run(rows, args.out, start_layer=args.start_layer, layers=num_layers, warmup=args.warmup, repeats=args.repeats)


if __name__ == "__main__":
    main()

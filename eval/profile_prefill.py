"""Where DASH's prefill time goes next to the ideal, at one length and ratio: per layer and per operator.

Qwen2-VL-7B language tower, random bf16 weights, SDPA, batch 1 (as ``bench_prefill.py``), the
DASH engine and the ideal (layers ``< l_s`` on T tokens, layers ``>= l_s`` on a precomputed
random subset). After ``--warmup`` runs of each:
  * per layer: CUDA events around every decoder layer (forward pre-hook and hook), median of
    ``--repeats`` runs, and the time outside the layers (whole run minus the layers);
  * per operator: the torch profiler's self CUDA time per run of every operator in either run,
    sorted by DASH minus ideal.

    cd eval && python profile_prefill.py --length 16384 --ratio 0.9   # -> eval/results/profile_prefill_qwen2vl7b.md
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from dash_vl import Halting
from dash_vl.methods import halted_count
from dash_vl.random_models import full_size_config, random_model
from gpu_timing import cuda_median_ms, ideal_prefill


def cuda_ms_by_operator(run: Callable[[], object], repeats: int) -> dict[str, float]:
    """Self CUDA time per call of ``run``, in ms, for each operator the profiler records."""
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as profiler:
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    return {event.key: event.self_device_time_total / 1000 / repeats for event in profiler.key_averages()}


def per_layer_ms(layers, run: Callable[[], object], repeats: int) -> tuple[list[float], float]:
    """Median CUDA-event time of each of ``layers`` within ``run`` and of the whole ``run``, in ms."""
    events: list[list[torch.cuda.Event]] = [[] for _ in layers]
    hooks = []
    for index, layer in enumerate(layers):
        def record(*_: object, index: int = index) -> None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            events[index].append(event)

        hooks += [layer.register_forward_pre_hook(record), layer.register_forward_hook(record)]
    per_run, totals = [], []
    try:
        for _ in range(repeats):
            for recorded in events:
                recorded.clear()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            torch.cuda.synchronize()
            totals.append(start.elapsed_time(end))
            per_run.append([sum(pair[0].elapsed_time(pair[1]) for pair in zip(rec[::2], rec[1::2])) for rec in events])
    finally:
        for hook in hooks:
            hook.remove()
    return [statistics.median(times) for times in zip(*per_run)], statistics.median(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--ratio", type=float, default=0.9)
    parser.add_argument("--start-layer", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()

    device = torch.device("cuda")
    model = random_model(full_size_config("qwen2_vl"), dtype=torch.bfloat16, device=device)
    language_model = model.model.language_model
    length = args.length
    generator = torch.Generator(device=device).manual_seed(length)
    embeds = torch.randn(1, length, language_model.config.hidden_size, device=device, dtype=torch.bfloat16,
                         generator=generator)
    rope_ids = torch.arange(length, device=device).view(1, 1, -1).expand(3, 1, -1)
    keep = length - halted_count(args.ratio, length - 1)
    keep_index = torch.randperm(length - 1, device=device, generator=generator)[: keep - 1]
    keep_index = torch.cat([keep_index, torch.tensor([length - 1], device=device)]).sort().values[None]

    def run_ideal():
        return ideal_prefill(language_model, embeds, rope_ids, args.start_layer, keep_index)

    def run_dash():
        return language_model(inputs_embeds=embeds, position_ids=rope_ids, use_cache=True)

    layers = language_model.layers
    with torch.no_grad(), Halting(model, ratio=args.ratio, start_layer=args.start_layer):
        dash_ms = cuda_median_ms(run_dash, args.warmup, 5)
        dash_layers, dash_total = per_layer_ms(layers, run_dash, 5)
        dash = cuda_ms_by_operator(run_dash, args.repeats)
    with torch.no_grad():
        ideal_ms = cuda_median_ms(run_ideal, args.warmup, 5)
        ideal_layers, ideal_total = per_layer_ms(layers, run_ideal, 5)
        ideal = cuda_ms_by_operator(run_ideal, args.repeats)

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; T={length}, ratio={args.ratio}, "
          f"l_s={args.start_layer}, kept {keep}")
    print(f"CUDA-event medians of 5: DASH {dash_ms:.1f} ms, ideal {ideal_ms:.1f} ms, DASH/ideal speed "
          f"{ideal_ms / dash_ms:.3f}")
    print("\n| layer | DASH ms | ideal ms | DASH - ideal |\n|---|---|---|---|")
    for index, (d, i) in enumerate(zip(dash_layers, ideal_layers)):
        print(f"| {index} | {d:.2f} | {i:.2f} | {d - i:+.2f} |")
    outside_dash, outside_ideal = dash_total - sum(dash_layers), ideal_total - sum(ideal_layers)
    print(f"| outside the layers | {outside_dash:.2f} | {outside_ideal:.2f} | {outside_dash - outside_ideal:+.2f} |")
    print(f"| whole run (hooked) | {dash_total:.2f} | {ideal_total:.2f} | {dash_total - ideal_total:+.2f} |\n")
    print(f"profiled self CUDA time per run: DASH {sum(dash.values()):.1f} ms, ideal {sum(ideal.values()):.1f} ms\n")
    print("| operator | DASH ms | ideal ms | DASH - ideal |\n|---|---|---|---|")
    names = sorted(set(dash) | set(ideal), key=lambda name: -abs(dash.get(name, 0) - ideal.get(name, 0)))
    for name in names[: args.rows]:
        d, i = dash.get(name, 0.0), ideal.get(name, 0.0)
        print(f"| {name[:90]} | {d:.2f} | {i:.2f} | {d - i:+.2f} |")


if __name__ == "__main__":
    main()

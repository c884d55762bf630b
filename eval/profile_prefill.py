"""Where DASH's prefill time goes next to the ideal, at one length and ratio: per layer and per operator.

Qwen2-VL-7B language tower, random bf16 weights, SDPA, batch 1 (as ``bench_prefill.py``), the
DASH engine and the ideal (layers ``< l_s`` on T tokens, layers ``>= l_s`` on a precomputed
random subset). After ``--warmup`` runs of each:
  * per layer: CUDA events around every decoder layer (forward pre-hook and hook), median of
    ``--repeats`` runs, and the time outside the layers (whole run minus the layers);
  * per operator: the torch profiler's self CUDA time per run of every operator in either run,
    sorted by DASH minus ideal;
  * inside DASH's decision step: a timeline of CUDA events and host clock readings at the
    engine's steps (from the end of layer ``l_s - 1`` to the start of layer ``l_s + 1``, and
    from the end of the last layer to the end of the run, then the report built when read), median
    of ``--repeats`` runs, and every call that makes the host wait for the GPU
    (``torch.cuda.set_sync_debug_mode``).

    cd eval && python profile_prefill.py --length 16384 --ratio 0.9   # -> eval/results/profile_prefill_qwen2vl7b.md
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from unittest.mock import patch

import torch
from torch.profiler import ProfilerActivity, profile

import dash_vl.engine.language_model
from dash_vl import Halting
from dash_vl.engine.decision_inputs import DecisionProbe
from dash_vl.engine.language_model import HaltingEngine
from dash_vl.methods import halted_count
from dash_vl.testing import full_size_config, random_model
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


class Timeline:
    """CUDA events and host clock readings at named points of repeated runs."""

    def __init__(self) -> None:
        self.runs: list[list[tuple[str, torch.cuda.Event, float]]] = []

    def mark(self, label: str) -> None:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.runs[-1].append((label, event, time.perf_counter()))

    def traced(self, label: str, function: Callable) -> Callable:
        """``function`` with a mark before and after each call."""

        def marked(*args: object, **kwargs: object) -> object:
            self.mark(f"{label} starts")
            result = function(*args, **kwargs)
            self.mark(f"{label} ends")
            return result

        return marked

    def intervals(self) -> list[tuple[str, str, float, float]]:
        """``(from, to, GPU ms, host ms)`` between consecutive marks, medians over the runs."""
        torch.cuda.synchronize()
        rows = []
        for step in range(len(self.runs[0]) - 1):
            pairs = [(run[step], run[step + 1]) for run in self.runs]
            gpu = statistics.median(first[1].elapsed_time(second[1]) for first, second in pairs)
            host = statistics.median(1000 * (second[2] - first[2]) for first, second in pairs)
            rows.append((pairs[0][0][0], pairs[0][1][0], gpu, host))
        return rows


def decision_step_timeline(engine: HaltingEngine, run: Callable[[], object], repeats: int) -> Timeline:
    """Mark the engine's steps around its decision layer in ``repeats`` runs of ``run``."""
    timeline = Timeline()
    layers, start = engine.adapter.layers, engine.start_layer
    method_class = type(engine.method)
    traced_functions = [
        (dash_vl.engine.language_model, "require_eligible", "require_eligible"),
        (DecisionProbe, "attention_update", "attention over all T"),
        (method_class, "decide", "policy decide (score + select)"),
        (dash_vl.engine.language_model, "compact_layout", "compact_layout"),
        (HaltingEngine, "_finish_decision_layer", "rest of layer l_s (gathers, K/V cache, MLP)"),
        (dash_vl.engine.language_model, "causal_mask", "causal_mask"),
        (engine.adapter, "position_embeddings", "rotary tables"),
        (HaltingEngine, "_report", "report (built when read)"),
    ]
    with ExitStack() as stack:
        for owner, name, label in traced_functions:
            stack.enter_context(patch.object(owner, name, timeline.traced(label, getattr(owner, name))))
        for index, hook in ((start - 1, "ends"), (start + 1, "starts"), (len(layers) - 1, "ends")):
            register = layers[index].register_forward_hook if hook == "ends" else layers[index].register_forward_pre_hook
            handle = register(lambda *_, label=f"layer {index} {hook}": timeline.mark(label))
            stack.callback(handle.remove)
        engine.reports  # build the reports left pending by earlier runs, so every run below has the same marks
        for _ in range(repeats):
            timeline.runs.append([])
            timeline.mark("run starts")
            run()
            timeline.mark("run ends")
            engine.reports  # read the report, as a caller would
    return timeline


def host_waits(run: Callable[[], object]) -> Counter:
    """Where one ``run`` makes the host wait for the GPU: ``file:line`` and count of each synchronizing call."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{warning.filename}:{warning.lineno}" for warning in caught if "synchroniz" in str(warning.message))


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
    with torch.no_grad(), Halting(model, ratio=args.ratio, start_layer=args.start_layer) as halting:
        dash_ms = cuda_median_ms(run_dash, args.warmup, 5)
        dash_layers, dash_total = per_layer_ms(layers, run_dash, 5)
        dash = cuda_ms_by_operator(run_dash, args.repeats)
        timeline = decision_step_timeline(halting.engine, run_dash, 5)
        waits = host_waits(run_dash)
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
    print("\nDASH's decision step, medians of 5 (GPU: CUDA events; host: clock; from one mark to the next)\n")
    print("| from | to | GPU ms | host ms |\n|---|---|---|---|")
    for first, second, gpu, host in timeline.intervals():
        if first != "run starts":  # the full-length layers before l_s: the per-layer table has them
            print(f"| {first} | {second} | {gpu:.3f} | {host:.3f} |")
    print(f"\nhost waits for the GPU in one DASH run: {sum(waits.values())}")
    for place, count in waits.most_common():
        print(f"  {count} x {place}")


if __name__ == "__main__":
    main()

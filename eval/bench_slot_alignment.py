"""A static decode step's attention (:func:`dash_vl.engine.static_slots.slot_attention`) against the buffer's slot count.

One decode query with Qwen2-VL-7B's heads (28 query heads, 4 key heads, head size 128), bf16, on a GPU: the
microseconds per call, median of 7 blocks of 100 calls after 20 warm-up calls, for slot counts that are and are
not multiples of 8. The static layout rounds every buffer up to ``SLOT_ALIGNMENT`` slots because of it.
With ``--generate T``, whole answers instead: DASH ρ 0.9 compiled on a random text prompt of ``T`` tokens
(Qwen2-VL-7B language-tower shapes, random bf16 weights, ``--new-tokens`` greedy tokens on a static cache), its
buffers laid out with ``SLOT_ALIGNMENT`` and with no rounding (1), each with its own ``Halting`` (one recorded
graph each), the two taking turns over ``--repeats``; the median decode step of each.

    PYTHONPATH=. python eval/bench_slot_alignment.py
    PYTHONPATH=. python eval/bench_slot_alignment.py --generate 16381 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics

import torch

from dash_vl.engine import static_slots
from dash_vl.engine.static_slots import slot_attention
from dash_vl.testing import full_size_config, random_model

SLOT_COUNTS = (16512, 16513, 16514, 16516, 16520, 16528, 16384, 16385, 1651, 1652, 1656, 1664)


def microseconds_per_call(slots: int, device: torch.device, calls: int = 100, blocks: int = 7) -> float:
    """Median over ``blocks`` of the mean time of ``calls`` calls over a buffer of ``slots`` slots (µs)."""
    query = torch.randn(1, 28, 1, 128, device=device, dtype=torch.bfloat16)
    key = torch.randn(1, 4, slots, 128, device=device, dtype=torch.bfloat16)
    value = torch.randn_like(key)
    mask = torch.ones(1, 1, 1, slots, dtype=torch.bool, device=device)
    for _ in range(20):
        slot_attention(None, query, key, value, mask)
    times = []
    for _ in range(blocks):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            slot_attention(None, query, key, value, mask)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return statistics.median(times)


def decode_steps(length: int, new_tokens: int, repeats: int, device: torch.device) -> dict[int, float]:
    """Per slot alignment (:data:`~dash_vl.engine.static_slots.SLOT_ALIGNMENT` and 1), DASH ρ 0.9's median
    compiled decode step (ms) on a text prompt of ``length`` tokens."""
    from batch_runs import halting_for  # eval/ is this script's directory
    from bench_generate import prompt_of, timed_generate

    model = random_model(full_size_config("qwen2_vl"), dtype=torch.bfloat16, device=device)
    model.generation_config.eos_token_id = None
    inputs = prompt_of(model, length, 1, False, device)
    aligned = static_slots.SLOT_ALIGNMENT
    haltings = {alignment: halting_for(model, "dash", 0.9) for alignment in (aligned, 1)}
    steps: dict[int, list[float]] = {alignment: [] for alignment in haltings}

    def answer(alignment: int, tokens: int) -> list[float]:
        static_slots.SLOT_ALIGNMENT = alignment  # read when a prefill lays its buffers out
        with haltings[alignment]:
            return timed_generate(model, inputs, tokens, "static", length + new_tokens)

    with torch.no_grad():
        for alignment in haltings:
            answer(alignment, new_tokens)  # lays out and records the graph
        for repeat in range(repeats):
            for alignment in haltings if repeat % 2 == 0 else reversed(list(haltings)):
                times = answer(alignment, new_tokens)
                steps[alignment] += [later - earlier for earlier, later in zip(times, times[1:])]
    static_slots.SLOT_ALIGNMENT = aligned
    return {alignment: statistics.median(values) for alignment, values in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generate", type=int, default=None, metavar="T", help="time whole answers on a prompt of T tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__)
    if args.generate is not None:
        slots = args.generate + args.new_tokens
        for alignment, step in decode_steps(args.generate, args.new_tokens, args.repeats, device).items():
            print(f"T={args.generate} N={args.new_tokens} (T + N = {slots}, mod 8 = {slots % 8}): SLOT_ALIGNMENT={alignment}: "
                  f"DASH 0.9 compiled, median decode step {step:.2f} ms")
        return
    for slots in SLOT_COUNTS:
        print(f"L={slots:6d}  L%8={slots % 8}  {microseconds_per_call(slots, device):7.1f} us/call")


if __name__ == "__main__":
    main()

"""A static decode step's attention (:func:`dash_vl.engine.static_slots.slot_attention`) against the buffer's slot count.

One decode query with Qwen2-VL-7B's heads (28 query heads, 4 key heads, head size 128), bf16, on a GPU: the
microseconds per call, median of 7 blocks of 100 calls after 20 warm-up calls, for slot counts that are and are
not multiples of 8. The static layout rounds every buffer up to ``SLOT_ALIGNMENT`` slots because of it.

    PYTHONPATH=. python eval/bench_slot_alignment.py
"""

from __future__ import annotations

import argparse
import statistics

import torch

from dash_vl.engine.static_slots import slot_attention

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


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), torch.__version__)
    for slots in SLOT_COUNTS:
        print(f"L={slots:6d}  L%8={slots % 8}  {microseconds_per_call(slots, device):7.1f} us/call")


if __name__ == "__main__":
    main()

"""The SDPA kernels a decode step may use on a GPU.

PyTorch's SDPA picks cuDNN attention for one query over a long cache on an H200 (torch 2.11), and
cuDNN builds an execution graph for every new key length: decoding makes a new length every step,
so each step pays that build on the host (about 40 ms a call in ``eval/bench_decode_attention.py``;
FlashAttention's kernel, 35–80 µs). A decode step under halting has two key lengths (full-length
and compact layers), so it paid twice. The engine's decode steps therefore leave cuDNN out; its
prefill keeps PyTorch's choice (cuDNN is the fastest there).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

DECODE_SDPA_BACKENDS: tuple[SDPBackend, ...] = (
    SDPBackend.FLASH_ATTENTION,  # maskless GQA: HF's path without padding
    SDPBackend.EFFICIENT_ATTENTION,  # an explicit padding mask (K/V already repeated by HF)
    SDPBackend.MATH,
)


def decode_attention_kernels(
    backends: tuple[SDPBackend, ...] | None, implementation: str, device: torch.device, query_length: int
) -> AbstractContextManager:
    """Restrict SDPA to ``backends`` for a call of ``query_length`` new tokens per sample on ``device``;
    a no-op off CUDA, for other attention implementations, for several new tokens, or when
    ``backends`` is ``None`` (PyTorch's own choice)."""
    if backends is None or implementation != "sdpa" or device.type != "cuda" or query_length != 1:
        return nullcontext()
    return sdpa_kernel(list(backends))

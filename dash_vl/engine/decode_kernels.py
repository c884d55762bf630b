"""The attention a decode step runs on: the engine's SDPA kernels.

PyTorch's SDPA picks cuDNN attention for one query over a long cache on an H200 (torch 2.11), and
cuDNN builds an execution graph for every new key length: decoding makes a new length every step,
so each step pays that build on the host (about 40 ms a call in ``eval/bench_decode_attention.py``;
FlashAttention's kernel, 35–80 µs). A decode step under halting has two key lengths (full-length
and compact layers), so it paid twice. The engine's decode steps therefore leave cuDNN out; its
prefill keeps PyTorch's choice (cuDNN is the fastest there).

A model loaded with a FlashAttention implementation decodes through SDPA too. HF's flash path
has no kv-cache kernel for FlashAttention-4 (``flash_attn_with_kvcache`` is ``None``): a padded
batch's step unpads every layer's whole cache and goes through the varlen function: Qwen2-VL-7B's
mixed 16k–4k batch decoded at 57–67 ms a step under halting, 41–43 ms through SDPA in the same run
(``eval/results/generate_flash4_decode_qwen2vl7b.md``). The prefill keeps the model's FlashAttention.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from dash_vl.engine.masks import is_flash

DECODE_SDPA_BACKENDS: tuple[SDPBackend, ...] = (
    SDPBackend.FLASH_ATTENTION,  # maskless GQA: HF's path without padding
    SDPBackend.EFFICIENT_ATTENTION,  # an explicit padding mask (K/V already repeated by HF)
    SDPBackend.MATH,
)


def decode_implementation(backends: tuple[SDPBackend, ...] | None, implementation: str, query_length: int) -> str:
    """The attention implementation of a call of ``query_length`` new tokens per sample on a model
    loaded with ``implementation``: ``"sdpa"`` for a one-token step of a FlashAttention model while
    the engine chooses decode kernels (``backends`` not ``None``); else ``implementation``."""
    if backends is not None and query_length == 1 and is_flash(implementation):
        return "sdpa"
    return implementation


def decode_attention_kernels(
    backends: tuple[SDPBackend, ...] | None, implementation: str, device: torch.device, query_length: int
) -> AbstractContextManager:
    """Restrict SDPA to ``backends`` for a call of ``query_length`` new tokens per sample on ``device``;
    a no-op off CUDA, for other attention implementations, for several new tokens, or when
    ``backends`` is ``None`` (PyTorch's own choice)."""
    if backends is None or implementation != "sdpa" or device.type != "cuda" or query_length != 1:
        return nullcontext()
    return sdpa_kernel(list(backends))

"""Document-causal FlexAttention over a packed sequence (several prompts laid end to end).

A packed sequence holds ``N`` tokens of several samples, each sample's tokens contiguous and in
prompt order. Token ``q`` may attend token ``k`` when both belong to the same sample and
``k <= q``. :func:`document_causal_mask` builds FlexAttention's :class:`BlockMask` for that rule
directly from the per-block sample ranges (``O((N / 128)²)`` work, no ``N x N`` mask is ever
materialised), and :func:`packed_attention` is the attention function the decoder layers call
while the engine runs packed (registered with transformers as :data:`PACKED_ATTENTION`).

Kernels: on a GPU FlexAttention runs compiled (``torch.compile(flex_attention)``, compiled once
per process and shape family; the first call of a new shape pays the compile); elsewhere (CPU)
it runs PyTorch's uncompiled reference implementation, which is exact but slow and builds the
score matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from dash_vl import hf_compat

BLOCK_SIZE = 128
"""Query and key tokens per block of the block mask (FlexAttention's default sparse block)."""

PACKED_ATTENTION = "dash_vl_packed_flex"
"""The attention implementation name under which :func:`packed_attention` is registered."""


def document_causal_mask(document: torch.Tensor, samples: int) -> BlockMask:
    """The block mask of causal attention within each sample of a packed sequence.

    Args:
        document: ``(N,)`` int, the sample of each packed token, non-decreasing (samples contiguous).
        samples: how many samples the sequence packs (the ids are below it).

    Returns:
        A :class:`BlockMask` for queries and keys ``(1, heads, N, head_dim)``: blocks of
        :data:`BLOCK_SIZE` x :data:`BLOCK_SIZE` tokens are skipped when they share no sample,
        computed without the mask function when one sample covers both blocks and the key block
        lies wholly before the query block, and masked token by token otherwise.
    """
    tokens = document.shape[0]
    blocks = -(-tokens // BLOCK_SIZE)
    # the tail of the last block gets a sample id of its own: it is never attended
    padded = torch.full((blocks * BLOCK_SIZE,), samples, dtype=torch.int32, device=document.device)
    padded[:tokens] = document
    per_block = padded.view(blocks, BLOCK_SIZE)
    lowest, highest = per_block.amin(dim=1), per_block.amax(dim=1)
    order = torch.arange(blocks, device=document.device)
    earlier = order[None, :] <= order[:, None]  # (query block, key block): the key block is not later
    touched = earlier & (highest[None, :] >= lowest[:, None])
    single = lowest == highest
    full = (order[None, :] < order[:, None]) & single[:, None] & single[None, :] & (lowest[None, :] == lowest[:, None])
    partial = touched & ~full

    def mask_mod(batch: torch.Tensor, head: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        return (padded[query] == padded[key]) & (key <= query)

    def listed(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = selected.sum(dim=1, dtype=torch.int32)
        indices = torch.argsort((~selected).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return counts[None, None], indices[None, None]

    return BlockMask.from_kv_blocks(
        *listed(partial), *listed(full), BLOCK_SIZE=BLOCK_SIZE, mask_mod=mask_mod, seq_lengths=(tokens, tokens)
    )


@cache
def compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """``torch.compile(flex_attention)``, built once per process (the GPU kernel)."""
    return torch.compile(flex_attention)


def packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: BlockMask,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """An HF attention function over a packed sequence.

    Args:
        module: the attention module calling (unused, part of HF's interface).
        query: ``(1, heads, N, head_dim)``, rotary applied.
        key, value: ``(1, kv_heads, N, head_dim)``; ``heads`` a multiple of ``kv_heads``. As in HF's
            own FlexAttention path, key and value heads are repeated to ``heads`` where ``heads`` is not
            a power of two (Qwen2-7B's 28); otherwise the kernel shares them (grouped-query attention).
        attention_mask: the :func:`document_causal_mask` of the sequence.
        scaling: the softmax scale (``head_dim ** -0.5`` where ``None``).
        dropout: must be 0 (prefill is inference).

    Returns:
        ``(1, N, heads, head_dim)`` attention output and ``None`` (no attention weights).
    """
    if dropout:
        raise ValueError("packed prefill runs inference only: attention dropout must be 0 (call model.eval())")
    heads = query.shape[1]
    if heads & (heads - 1):
        key, value = (part.repeat_interleave(heads // part.shape[1], dim=1) for part in (key, value))
    kernel = compiled_flex_attention() if query.is_cuda else flex_attention
    output = kernel(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=heads != key.shape[1])
    return output.transpose(1, 2).contiguous(), None


hf_compat.register_attention(PACKED_ATTENTION, packed_attention)

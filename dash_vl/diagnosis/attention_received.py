"""Attention *received* by each key of one causal attention layer, computed in query chunks.

The attention received by key ``j`` is the sum over queries ``i >= j`` of the softmax
probability ``P[h, i, j]``, averaged over heads ``h``: the share of all queries' attention that
lands on token ``j``. Summed over keys it equals the number of queries. Only one chunk of
``(heads, chunk, T)`` probabilities exists at a time, never ``(heads, T, T)``.
"""

from __future__ import annotations

import torch


def attention_received(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 128, first_query: int = 0) -> torch.Tensor:
    """Attention received per key from ``Q`` queries under a causal mask, in float32.

    Args:
        queries: ``(heads, Q, head_dim)``: rotary applied and multiplied by the attention's scaling;
            they sit at positions ``first_query, ..., first_query + Q - 1`` of the ``T`` keys
            (``Q = T`` and ``first_query = 0``: every query of the prompt).
        keys: ``(kv_heads, T, head_dim)``: rotary applied; ``heads`` must be a multiple of
            ``kv_heads`` (grouped-query attention: each key head serves ``heads / kv_heads`` queries).
        chunk: query rows per step.
        first_query: the position of the first query.

    Returns:
        ``(T,)``: per key, the sum over queries of the probability, averaged over heads.
    """
    heads, seq_len = queries.shape[0], keys.shape[1]
    if heads % keys.shape[0]:
        raise ValueError(f"query heads ({heads}) must be a multiple of key heads ({keys.shape[0]})")
    keys = keys.float().repeat_interleave(heads // keys.shape[0], dim=0).transpose(1, 2)
    key_positions = torch.arange(seq_len, device=queries.device)
    received = torch.zeros(seq_len, device=queries.device)
    for start in range(0, queries.shape[1], chunk):
        logits = queries[:, start : start + chunk].float() @ keys
        query_positions = key_positions[first_query + start : first_query + start + chunk, None]
        logits = logits.masked_fill(key_positions[None, :] > query_positions, -torch.inf)
        received += logits.softmax(dim=-1).sum(dim=1).mean(dim=0)
    return received

"""Causal attention masks in the form each HF attention implementation expects.

The engine builds its own masks because layers past the decision layer attend over a compact
key layout whose length differs from the cache of layer 0, which HF's mask helpers assume.
The conventions follow HF's: SDPA takes a boolean mask (True = attend) or ``None`` for plain
causal attention, eager takes an additive float mask, FlashAttention a 2-D padding mask.
"""

from __future__ import annotations

import torch

SUPPORTED_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def check_implementation(implementation: str) -> None:
    """Raise ``ValueError`` for an attention implementation the engine cannot mask."""
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {implementation!r} is not supported by dash_vl; use one of {SUPPORTED_IMPLEMENTATIONS}"
        )


def causal_mask(
    implementation: str, key_valid: torch.Tensor, query_length: int, dtype: torch.dtype, all_valid: bool | None = None
) -> torch.Tensor | None:
    """The mask for queries that are the last ``query_length`` of ``S`` key slots.

    Query ``i`` may attend key slot ``j`` when ``key_valid[b, j]`` and ``j <= S - query_length + i``:
    slots hold tokens in prompt order, so slot order is causal order.

    Args:
        implementation: ``config._attn_implementation`` of the language model.
        key_valid: ``(batch, S)`` bool, False on padding slots.
        query_length: number of query tokens ``Q <= S``.
        dtype: dtype of the additive mask for eager attention.
        all_valid: whether every slot of ``key_valid`` is True, where the caller knows it (the host
            then does not wait for the GPU to check).

    Returns:
        ``None`` where the kernel's own causal mode suffices; else ``(batch, S)`` long for
        FlashAttention, ``(batch, 1, Q, S)`` bool for SDPA, ``(batch, 1, Q, S)`` ``dtype`` for eager.
    """
    check_implementation(implementation)
    key_length = key_valid.shape[1]
    all_valid = bool(key_valid.all()) if all_valid is None else all_valid
    if implementation.startswith("flash_attention"):
        return None if all_valid else key_valid.long()
    if implementation == "sdpa" and all_valid and query_length in (1, key_length):
        return None
    query_slots = torch.arange(key_length - query_length, key_length, device=key_valid.device)
    key_slots = torch.arange(key_length, device=key_valid.device)
    allowed = (key_slots[None, :] <= query_slots[:, None])[None, None] & key_valid[:, None, None, :]
    if implementation == "sdpa":
        return allowed
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=key_valid.device)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=key_valid.device), blocked)

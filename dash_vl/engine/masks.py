"""Causal attention masks in the form each HF attention implementation expects.

The engine builds its own masks because layers past the decision layer attend over a compact
key layout whose length differs from the cache of layer 0, which HF's mask helpers assume.
The conventions follow HF's: SDPA takes a boolean mask (True = attend) or ``None`` for plain
causal attention, eager takes an additive float mask, FlashAttention a 2-D padding mask.
Sliding-window layers get their window from the positions the key slots hold.
"""

from __future__ import annotations

import torch

SUPPORTED_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flash_attention_4")


def check_implementation(implementation: str) -> None:
    """Raise ``ValueError`` for an attention implementation the engine cannot mask."""
    if implementation not in SUPPORTED_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation {implementation!r} is not supported by dash_vl; use one of {SUPPORTED_IMPLEMENTATIONS}"
        )


def is_flash(implementation: str) -> bool:
    """Whether ``implementation`` is one of FlashAttention's (HF's flash path: padding masks, varlen functions)."""
    return implementation.startswith("flash_attention")


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
    if is_flash(implementation):
        return None if all_valid else key_valid.long()
    if implementation == "sdpa" and all_valid and query_length in (1, key_length):
        return None
    return _as_implementation(implementation, _causal_allowed(key_valid, query_length), dtype)


def sliding_window_mask(
    implementation: str, key_valid: torch.Tensor, key_positions: torch.Tensor, query_length: int, window: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The causal mask of :func:`causal_mask`, further limited to a sliding window measured in positions.

    Query ``i`` (the token in slot ``S - Q + i``) may attend key slot ``j`` only when
    ``key_positions[b, j] > key_positions[b, S - Q + i] - window``, as HF's sliding-window layers
    do over sequence indices. In a compact halted layout slots skip halted tokens, so the window
    is measured in the positions the slots hold, never in slot indices.

    Args:
        key_positions: ``(batch, S)`` long, the sequence index (padding included) each slot holds.
        window: ``config.sliding_window``: keys at distance ``>= window`` are masked.

    Returns:
        ``(batch, 1, Q, S)`` bool for SDPA, ``(batch, 1, Q, S)`` ``dtype`` for eager.

    Raises:
        ValueError: for FlashAttention, whose window counts key slots.
    """
    check_implementation(implementation)
    if is_flash(implementation):
        raise ValueError(
            f"{implementation} applies a sliding window over key slots, which halting rearranges; use "
            "attn_implementation='sdpa' or 'eager' for a model whose sliding window is shorter than the sequence"
        )
    query_positions = key_positions[:, -query_length:]
    in_window = key_positions[:, None, None, :] > query_positions[:, None, :, None] - window
    return _as_implementation(implementation, _causal_allowed(key_valid, query_length) & in_window, dtype)


def _causal_allowed(key_valid: torch.Tensor, query_length: int) -> torch.Tensor:
    """``(batch, 1, Q, S)`` bool: valid key slots at or before each query's slot."""
    key_length = key_valid.shape[1]
    query_slots = torch.arange(key_length - query_length, key_length, device=key_valid.device)
    key_slots = torch.arange(key_length, device=key_valid.device)
    return (key_slots[None, :] <= query_slots[:, None])[None, None] & key_valid[:, None, None, :]


def _as_implementation(implementation: str, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``allowed`` as SDPA takes it (bool) or as eager takes it (additive ``dtype``)."""
    if implementation == "sdpa":
        return allowed
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), blocked)

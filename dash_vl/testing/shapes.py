"""Language-model shapes shared by the 7B/8B checkpoints (Qwen2-7B / Qwen2.5-7B)."""

from __future__ import annotations

from typing import Any

QWEN2_7B_TEXT: dict[str, Any] = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)


def qwen2_7b_text(num_layers: int | None, **fields: Any) -> dict[str, Any]:
    """:data:`QWEN2_7B_TEXT` with ``fields`` (vocabulary, rotary settings) and optionally fewer layers."""
    return dict(QWEN2_7B_TEXT, num_hidden_layers=num_layers or QWEN2_7B_TEXT["num_hidden_layers"], **fields)

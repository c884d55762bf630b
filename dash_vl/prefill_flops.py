"""Theoretical prefill FLOPs of the decoder layers, unmodified and halted, sliding windows included.

Linear terms count each token a layer runs on; the attention term counts the query-key pairs a
layer scores. A pair is a query and a key at or before it, and in a ``"sliding_attention"`` layer
also less than ``sliding_window`` positions back. Positions are sequence indices, so in a halted
layer the window spans the positions its kept keys hold, as the engine masks it
(:mod:`dash_vl.layer_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LayerShapes:
    """Sizes of one transformer layer (a decoder layer, or a vision tower's block), for FLOP counts.

    Attributes:
        hidden: model width ``D``.
        heads: query heads ``H``.
        kv_heads: key/value heads.
        head_dim: ``d`` per head.
        intermediate: MLP width ``I``.
        mlp_matrices: ``D x I`` matrices of the MLP: 3 for a gated one (gate, up, down), 2 for
            ``fc1`` / ``fc2`` (the ViTs but Qwen2.5-VL's).
    """

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    mlp_matrices: int = 3

    @classmethod
    def from_config(cls, config: Any, mlp_matrices: int = 3) -> LayerShapes:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            mlp_matrices=mlp_matrices,
        )

    def projection_flops(self, tokens: int) -> float:
        """Q, K, V and output projections for ``tokens`` tokens (2 FLOPs per multiply-add)."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return 2.0 * tokens * (q_and_o + k_and_v)

    def mlp_flops(self, tokens: int) -> float:
        return 2.0 * tokens * self.mlp_matrices * self.hidden * self.intermediate

    def attention_flops(self, pairs: int) -> float:
        """Scores and weighted values over ``pairs`` query-key pairs, every query head."""
        return 4.0 * self.heads * self.head_dim * pairs

    def layer_flops(self, queries: int, pairs: int, mlp_tokens: int | None = None) -> float:
        """One layer: projections for ``queries`` tokens, attention over ``pairs`` query-key pairs,
        MLP for ``mlp_tokens`` (default: the queries)."""
        mlp_tokens = queries if mlp_tokens is None else mlp_tokens
        return self.projection_flops(queries) + self.attention_flops(pairs) + self.mlp_flops(mlp_tokens)


def attended_pairs(keys: torch.Tensor, queries: torch.Tensor, window: int | None) -> int:
    """Query-key pairs of causal attention: for each query position ``q``, the keys at positions
    ``k <= q`` with ``q - k < window`` (no limit where ``window`` is ``None``).

    Args:
        keys: ``(S,)`` long, ascending positions of the key slots.
        queries: ``(Q,)`` long, positions of the queries (each also a key).
    """
    up_to_query = torch.searchsorted(keys, queries, right=True)
    if window is None:
        return int(up_to_query.sum())
    before_window = torch.searchsorted(keys, queries - window, right=True)
    return int((up_to_query - before_window).sum())


@dataclass(frozen=True)
class DecisionLayerWork:
    """What the decision layer ``l_s`` runs, by the method's placement.

    Attributes:
        attends_all: its attention runs over every context token (DASH scores its output), not
            only the kept ones (a decision made on the layer's input).
        mlp_on_all: its MLP runs over every context token too (a whole-block score).
    """

    attends_all: bool
    mlp_on_all: bool


def prefill_flops(
    shapes: LayerShapes,
    windows: tuple[int | None, ...],
    start_layer: int,
    decision: DecisionLayerWork,
    context: torch.Tensor,
    kept: torch.Tensor,
    question_len: int,
) -> tuple[float, float]:
    """``(halted, unmodified)`` decoder FLOPs of one sample's prefill.

    Args:
        windows: per decoder layer, its sliding window in positions, ``None`` for full attention.
        context: ``(T,)`` long, ascending positions of the sample's context tokens.
        kept: ``(K,)`` long, those active after ``l_s``.
        question_len: uncompressed question tokens right after the context (they run every layer,
            attending to the whole context below ``l_s`` and to the kept tokens from ``l_s`` on).
    """
    end = int(context[-1]) + 1 if len(context) else 0
    question = torch.arange(end, end + question_len, device=context.device)
    full_keys, kept_keys = torch.cat([context, question]), torch.cat([kept, question])
    tokens, keep = len(context), len(kept)
    full_layer, kept_layer, question_full, question_kept = {}, {}, {}, {}
    for window in set(windows):
        full_layer[window] = attended_pairs(context, context, window)
        kept_layer[window] = attended_pairs(kept, kept, window)
        question_full[window] = shapes.layer_flops(question_len, attended_pairs(full_keys, question, window))
        question_kept[window] = shapes.layer_flops(question_len, attended_pairs(kept_keys, question, window))
    unmodified = [shapes.layer_flops(tokens, full_layer[w]) + question_full[w] for w in windows]
    decision_window = windows[start_layer]
    if decision.attends_all:
        mlp_tokens = tokens if decision.mlp_on_all else keep
        decision_flops = shapes.layer_flops(tokens, full_layer[decision_window], mlp_tokens=mlp_tokens)
    else:
        decision_flops = shapes.layer_flops(keep, kept_layer[decision_window])
    halted = (
        sum(unmodified[:start_layer])
        + decision_flops
        + sum(shapes.layer_flops(keep, kept_layer[w]) for w in windows[start_layer + 1 :])
        + sum(question_kept[w] for w in windows[start_layer:])
    )
    return halted, sum(unmodified)

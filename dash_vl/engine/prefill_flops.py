"""Theoretical prefill FLOPs of the decoder layers, unmodified and halted, sliding windows included.

Linear terms count each token a layer runs on; the attention term counts the query-key pairs a
layer scores. A pair is a query and a key at or before it, and in a ``"sliding_attention"`` layer
also less than ``sliding_window`` positions back. Positions are sequence indices, so in a halted
layer the window spans the positions its kept keys hold, as the engine masks it
(:mod:`dash_vl.engine.layer_inputs`).
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

    def scoring_flops(self, keys: int, queries: int, pairs: int) -> float:
        """A policy's own attention scores at a decision layer: K projections for ``keys`` tokens, Q
        projections for ``queries`` rows, and their scores over ``pairs`` query-key pairs (no values)."""
        projections = 2.0 * self.hidden * self.head_dim * (keys * self.kv_heads + queries * self.heads)
        return projections + 2.0 * self.heads * self.head_dim * pairs

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
        scoring_queries: the last query rows of the tokens active before the decision whose attention
            the policy computes with the layer's own projections over those tokens (PyramidDrop 1,
            SnapKV its observation window; 0: none).
    """

    attends_all: bool
    mlp_on_all: bool
    scoring_queries: int = 0


def prefill_flops(
    shapes: LayerShapes,
    windows: tuple[int | None, ...],
    decision_layers: list[int],
    decision: DecisionLayerWork,
    context: torch.Tensor,
    kept: list[torch.Tensor],
    question_len: int,
) -> tuple[list[float], list[float]]:
    """``(halted, unmodified)`` decoder FLOPs of one sample's prefill, per layer.

    Args:
        windows: per decoder layer, its sliding window in positions, ``None`` for full attention.
        decision_layers: ascending, the layer of each decision; decision ``s``'s tokens run the layers
            from its layer to the next decision's.
        context: ``(T,)`` long, ascending positions of the sample's context tokens.
        kept: per decision, ``(K_s,)`` long, those active after it (ascending).
        question_len: uncompressed question tokens right after the context (they run every layer,
            attending to the whole context below the first decision layer and to the tokens each
            stage keeps from there on).
    """
    end = int(context[-1]) + 1 if len(context) else 0
    question = torch.arange(end, end + question_len, device=context.device)
    token_sets = [context, *kept]
    pairs: dict[tuple[int, int | None], int] = {}
    question_flops: dict[tuple[int, int | None], float] = {}
    for number, tokens in enumerate(token_sets):
        for window in set(windows):
            pairs[number, window] = attended_pairs(tokens, tokens, window)
            keys = torch.cat([tokens, question])
            question_flops[number, window] = shapes.layer_flops(question_len, attended_pairs(keys, question, window))
    stage_of_layer = [sum(layer >= start for start in decision_layers) for layer in range(len(windows))]
    unmodified, halted = [], []
    for layer, window in enumerate(windows):
        unmodified.append(shapes.layer_flops(len(context), pairs[0, window]) + question_flops[0, window])
        stage = stage_of_layer[layer]
        after = len(token_sets[stage])
        deciding = stage > 0 and layer == decision_layers[stage - 1]
        if deciding and decision.attends_all:
            before = len(token_sets[stage - 1])
            mlp_tokens = before if decision.mlp_on_all else after
            work = shapes.layer_flops(before, pairs[stage - 1, window], mlp_tokens=mlp_tokens)
        else:
            work = shapes.layer_flops(after, pairs[stage, window])
        if deciding and decision.scoring_queries:
            keys = token_sets[stage - 1]
            rows = keys[-decision.scoring_queries :]
            work += shapes.scoring_flops(len(keys), len(rows), attended_pairs(keys, rows, window))
        halted.append(work + question_flops[stage, window])
    return halted, unmodified

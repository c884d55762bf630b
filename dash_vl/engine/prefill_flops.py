"""Theoretical prefill FLOPs of the decoder layers, unmodified and halted, sliding windows and
linear-attention layers included.

Per-token terms (projections, MLP) count each token a layer runs on; the attention term counts
the query-key pairs a layer scores. A pair is a query and a key at or before it, and in a
``"sliding_attention"`` layer also less than ``sliding_window`` positions back. Positions are
sequence indices, so in a halted layer the window spans the positions its kept keys hold, as the
engine masks it (:mod:`dash_vl.engine.layer_inputs`). A ``"linear_attention"`` layer (a gated
delta net, Qwen3.5's) scores no pairs: its token mixer costs the same for every token it runs on
(:class:`LinearAttentionShapes`), its recurrence counted in the recurrent form whatever kernel
runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LinearAttentionShapes:
    """Sizes of a gated delta net, the token mixer of a ``"linear_attention"`` layer (HF's
    ``Qwen3_5GatedDeltaNet``), for FLOP counts.

    Per token it runs ``in_proj_qkv`` (``D -> 2 Hk dk + Hv dv``, the convolution's channels),
    ``in_proj_z`` (``D -> Hv dv``, the output gate), ``in_proj_b`` and ``in_proj_a`` (``D -> Hv``, the
    write strength and the decay), a depthwise causal convolution of ``kernel`` taps over the
    ``2 Hk dk + Hv dv`` channels, the delta-rule recurrence, and ``out_proj`` (``Hv dv -> D``).

    Attributes:
        hidden: model width ``D``.
        key_heads: query/key heads ``Hk``.
        value_heads: value heads ``Hv``, each with its own ``dk x dv`` state.
        key_dim: ``dk`` per query/key head.
        value_dim: ``dv`` per value head.
        kernel: taps of the causal convolution.
    """

    hidden: int
    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    kernel: int

    @classmethod
    def from_config(cls, config: Any) -> LinearAttentionShapes | None:
        """The sizes in a text config's ``linear_*`` fields (Qwen3.5's); ``None`` where it has none."""
        if getattr(config, "linear_num_key_heads", None) is None:
            return None
        return cls(
            hidden=config.hidden_size,
            key_heads=config.linear_num_key_heads,
            value_heads=config.linear_num_value_heads,
            key_dim=config.linear_key_head_dim,
            value_dim=config.linear_value_head_dim,
            kernel=config.linear_conv_kernel_dim,
        )

    @property
    def channels(self) -> int:
        """The convolution's channels, ``2 Hk dk + Hv dv`` (queries, keys, values)."""
        return 2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim

    def projection_flops(self, tokens: int) -> float:
        """``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a`` and ``out_proj`` for ``tokens`` tokens
        (2 FLOPs per multiply-add)."""
        values = self.value_heads * self.value_dim
        outputs = self.channels + values + 2 * self.value_heads
        return 2.0 * tokens * self.hidden * (outputs + values)

    def convolution_flops(self, tokens: int) -> float:
        """The depthwise causal convolution: ``kernel`` multiply-adds per channel and token."""
        return 2.0 * tokens * self.channels * self.kernel

    def recurrence_flops(self, tokens: int) -> float:
        """The gated delta rule in its recurrent form: per token and value head, over its ``dk x dv``
        state ``S``, the decay ``S <- exp(g) S`` (one multiply per entry), the read ``S^T k``, the rank-one
        write ``S <- S + k (beta (v - S^T k))^T`` and the output ``S^T q`` (one multiply-add per entry
        each): ``7 dk dv`` FLOPs. The per-vector work (normalising ``q`` and ``k``, the gates, the gated
        norm) is left out, as norms and activations are elsewhere."""
        return 7.0 * tokens * self.value_heads * self.key_dim * self.value_dim

    def mixer_flops(self, tokens: int) -> float:
        """The whole token mixer for ``tokens`` tokens: projections, convolution and recurrence."""
        return self.projection_flops(tokens) + self.convolution_flops(tokens) + self.recurrence_flops(tokens)


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
        output_gate: ``q_proj`` also yields a per-head output gate (``D -> 2 H d``: Qwen3.5's
            full-attention layers).
        linear: the gated delta net of the ``"linear_attention"`` layers; ``None`` where the model has none.
    """

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    mlp_matrices: int = 3
    output_gate: bool = False
    linear: LinearAttentionShapes | None = None

    @classmethod
    def from_config(cls, config: Any, mlp_matrices: int = 3, output_gate: bool = False) -> LayerShapes:
        """The sizes in ``config``, the gated delta net's where it has the ``linear_*`` fields."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            mlp_matrices=mlp_matrices,
            output_gate=output_gate,
            linear=LinearAttentionShapes.from_config(config),
        )

    @property
    def query_outputs(self) -> int:
        """Outputs of ``q_proj``: ``H d``, twice that with the output gate."""
        return (2 if self.output_gate else 1) * self.heads * self.head_dim

    def projection_flops(self, tokens: int) -> float:
        """Q, K, V and output projections for ``tokens`` tokens (2 FLOPs per multiply-add)."""
        q_and_o = self.hidden * (self.query_outputs + self.heads * self.head_dim)
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
        projections = 2.0 * self.hidden * (keys * self.kv_heads * self.head_dim + queries * self.query_outputs)
        return projections + 2.0 * self.heads * self.head_dim * pairs

    def layer_flops(self, queries: int, pairs: int, mlp_tokens: int | None = None) -> float:
        """One layer: projections for ``queries`` tokens, attention over ``pairs`` query-key pairs,
        MLP for ``mlp_tokens`` (default: the queries)."""
        mlp_tokens = queries if mlp_tokens is None else mlp_tokens
        return self.projection_flops(queries) + self.attention_flops(pairs) + self.mlp_flops(mlp_tokens)

    def linear_layer_flops(self, tokens: int) -> float:
        """One ``"linear_attention"`` layer over ``tokens`` tokens: its gated delta net and MLP."""
        return self.linear.mixer_flops(tokens) + self.mlp_flops(tokens)


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
        attends_all: its token mixer runs over every context token (DASH scores its output), not
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
    linear_layers: tuple[bool, ...],
    decision_layers: list[int],
    decision: DecisionLayerWork,
    context: torch.Tensor,
    kept: list[torch.Tensor],
    question_len: int,
) -> tuple[list[float], list[float]]:
    """``(halted, unmodified)`` decoder FLOPs of one sample's prefill, per layer.

    An attention decision layer under ``decision.attends_all`` runs its attention over the tokens
    active before the decision and the rest of the layer on those after it (on all of them under
    ``mlp_on_all``). A linear one runs its gated delta net over the tokens before the decision for
    the score (and its MLP, under ``mlp_on_all``), then the whole layer on the tokens after it, so
    that its recurrent state is theirs alone; no policy scores with its attention (it has none).

    Args:
        windows: per decoder layer, its sliding window in positions, ``None`` for full attention
            (and for a linear-attention layer).
        linear_layers: per decoder layer, whether it is a ``"linear_attention"`` layer (its mixer:
            :attr:`LayerShapes.linear`).
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
    attention_windows = {window for window, linear in zip(windows, linear_layers) if not linear}
    for number, tokens in enumerate(token_sets):
        for window in attention_windows:
            pairs[number, window] = attended_pairs(tokens, tokens, window)
            keys = torch.cat([tokens, question])
            question_flops[number, window] = shapes.layer_flops(question_len, attended_pairs(keys, question, window))
    stage_of_layer = [sum(layer >= start for start in decision_layers) for layer in range(len(windows))]
    unmodified, halted = [], []
    for layer, (window, linear) in enumerate(zip(windows, linear_layers)):
        stage = stage_of_layer[layer]
        after = len(token_sets[stage])
        deciding = stage > 0 and layer == decision_layers[stage - 1]
        if linear:
            unmodified.append(shapes.linear_layer_flops(len(context) + question_len))
            work = shapes.linear_layer_flops(after + question_len)
            if deciding and decision.attends_all:
                before = len(token_sets[stage - 1])
                work += shapes.linear.mixer_flops(before) + (shapes.mlp_flops(before) if decision.mlp_on_all else 0.0)
            halted.append(work)
            continue
        unmodified.append(shapes.layer_flops(len(context), pairs[0, window]) + question_flops[0, window])
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

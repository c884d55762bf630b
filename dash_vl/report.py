"""What one halted prefill did: token counts per layer and its theoretical FLOPs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LayerShapes:
    """Sizes of one decoder layer, for FLOP counts.

    Attributes:
        hidden: model width ``D``.
        heads: query heads ``H``.
        kv_heads: key/value heads.
        head_dim: ``d`` per head.
        intermediate: gated MLP width (three ``D x I`` matrices).
    """

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @classmethod
    def from_config(cls, config: Any) -> LayerShapes:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
        )

    def projection_flops(self, tokens: int) -> float:
        """Q, K, V and output projections for ``tokens`` tokens (2 FLOPs per multiply-add)."""
        q_and_o = 2 * self.hidden * self.heads * self.head_dim
        k_and_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return 2.0 * tokens * (q_and_o + k_and_v)

    def mlp_flops(self, tokens: int) -> float:
        return 2.0 * tokens * 3 * self.hidden * self.intermediate

    def attention_flops(self, queries: int, earlier_keys: int) -> float:
        """Scores and weighted values for ``queries`` causal queries after ``earlier_keys`` cached keys."""
        pairs = queries * earlier_keys + queries * (queries + 1) / 2
        return 4.0 * self.heads * self.head_dim * pairs

    def layer_flops(self, queries: int, earlier_keys: int = 0, mlp_tokens: int | None = None) -> float:
        """One layer: attention for ``queries`` tokens, MLP for ``mlp_tokens`` (default: the same)."""
        mlp_tokens = queries if mlp_tokens is None else mlp_tokens
        return (
            self.projection_flops(queries)
            + self.attention_flops(queries, earlier_keys)
            + self.mlp_flops(mlp_tokens)
        )


@dataclass(frozen=True)
class HaltingReport:
    """Per prefill call: what the engine halted and what it saved.

    Attributes:
        start_layer: the decision layer ``l_s``.
        prompt_tokens: non-padding prompt tokens ``T`` per sample.
        eligible_tokens: tokens that could be halted, per sample.
        kept_tokens_per_layer: ``[layer][sample]``, prompt tokens each layer ran on and cached.
        kept_positions: ``[sample]``, prompt positions (indices into the padded prompt) still
            active after the decision layer, ascending.
        relative_flops: theoretical prefill FLOPs of the decoder layers (linear + attention
            terms, vision encoder and LM head excluded) over those of the unmodified model.
    """

    start_layer: int
    prompt_tokens: list[int]
    eligible_tokens: list[int]
    kept_tokens_per_layer: list[list[int]]
    kept_positions: list[list[int]]
    relative_flops: float

    def summary(self) -> str:
        return (
            f"halted at layer {self.start_layer}: kept {sum(self.kept_tokens_per_layer[-1])} of "
            f"{sum(self.prompt_tokens)} prompt tokens ({sum(self.eligible_tokens)} eligible), "
            f"{self.relative_flops:.3f}x the prefill FLOPs"
        )

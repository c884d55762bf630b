"""What one halted prefill did: token counts per layer and per decision, and its theoretical FLOPs
(:mod:`dash_vl.engine.prefill_flops`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HaltingReport:
    """Per prefill call: what the engine halted and what it saved.

    Attributes:
        start_layer: the (first) decision layer ``l_s``.
        prompt_tokens: non-padding prompt tokens ``T`` per sample.
        eligible_tokens: tokens that could be halted, per sample.
        kept_tokens_per_layer: ``[layer][sample]``, prompt tokens each layer ran on and cached (the
            length of each layer's KV cache after the prefill, padding excluded).
        kept_positions: ``[sample]``, prompt positions (indices into the padded prompt) still
            active after the last decision layer, ascending.
        relative_flops: theoretical prefill FLOPs of the decoder layers (per-token terms: projections,
            MLP, a linear-attention layer's gated delta net; attention per query-key pair; vision encoder
            and LM head excluded) over those of the unmodified model.
        ratio: the ρ the prefill ran with; at ``0`` no decision was made (every layer ran on every token).
        decision_layers: the layer of every decision, ``[start_layer]`` for a single one.
        kept_positions_per_stage: ``[decision][sample]``, the positions active after each decision
            (the last entry is :attr:`kept_positions`).
        relative_flops_per_stage: per decision, the FLOPs of its layers (from its decision layer to
            the next one) over those of the same layers unmodified.
    """

    start_layer: int
    prompt_tokens: list[int]
    eligible_tokens: list[int]
    kept_tokens_per_layer: list[list[int]]
    kept_positions: list[list[int]]
    relative_flops: float
    ratio: float
    decision_layers: list[int]
    kept_positions_per_stage: list[list[list[int]]]
    relative_flops_per_stage: list[float]

    def summary(self) -> str:
        if self.ratio == 0:
            return (
                f"no halting (ratio 0): every layer ran on all {sum(self.prompt_tokens)} prompt tokens, "
                f"{self.relative_flops:.3f}x the prefill FLOPs"
            )
        layers = ", ".join(map(str, self.decision_layers))
        where = f"layers {layers}" if len(self.decision_layers) > 1 else f"layer {layers}"
        return (
            f"halted at {where}: kept {sum(self.kept_tokens_per_layer[-1])} of "
            f"{sum(self.prompt_tokens)} prompt tokens ({sum(self.eligible_tokens)} eligible), "
            f"{self.relative_flops:.3f}x the prefill FLOPs"
        )

"""SnapKV used as a prefill pruner ("SnapKV (pruned)", the comparison of the DASH paper): SnapKV's
score (Li et al., 2024, "SnapKV: LLM Knows What You are Looking for Before Generation") picks the
tokens that stay active from the decision layer on, instead of the KV entries each head keeps.

The score follows kvpress's ``SnapKVPress`` (NVIDIA/kvpress, commit 8bb29b9,
``kvpress/presses/snapkv_press.py``; the DASH paper runs its comparisons in kvpress) and the
official SnapKV (FasterDecoding/SnapKV, commit e216ddc, ``snapkv/monkeypatch/snapkv_utils.py``):

1. observation window: the last ``W`` prompt tokens (``observation_window``; kvpress
   ``window_size = 64``, line 38; official default 32, ``init_snapkv`` line 75); their queries in
   the decision layer ``l`` (its own projections and rotary over the states entering it, as the
   press reads layer ``l``'s attention input, lines 53-58) attend causally over every key (lines
   60-66; official lines 45-54), softmax in float32;
2. per head, the window's probabilities on each earlier token, averaged over the window's
   queries (kvpress line 95; the official code sums them, line 55: the same order), smoothed by
   ``avg_pool1d`` of kernel 5, padding 2, stride 1 over the tokens before the window (kvpress line
   96, ``kernel_size = 5`` line 39; official lines 56-57 with ``pooling = 'avgpool'``, line 81);
3. heads: averaged. kvpress averages the query heads of each KV group (lines 99-100) and keeps a
   set per KV head, the official code a set per query head (line 62); a pruner removes tokens from
   every head at once, so here the average runs over all heads (the group means, averaged);
4. the window itself is never halted (kvpress pads it with the largest score, line 103); of the
   other eligible tokens the lowest-scoring are halted, ``floor(ρ E)`` of the ``E`` eligible
   tokens (window included, as kvpress counts ``int(T (1 - ρ))`` kept of all ``T``, scorer_press.py
   line 94, the window among them); of tied scores the earlier token is halted first.

Queries are scaled by the layer's own attention scaling (kvpress divides by ``sqrt(head_dim)``, the
same but where a family sets another scale, e.g. Gemma's ``query_pre_attn_scalar``); a sliding-window
decision layer masks its window (kvpress's window attention is causal only).

The decision is made on layer ``l``'s input (placement ``"layer_input"``): the tokens halted no
longer run layer ``l`` or any later one (kvpress compresses layer ``l``'s cache after its
attention ran over all tokens and keeps every hidden state; a pruner drops the tokens). At a
later stage (``stage_layers``) the same rule runs over the tokens still active, pooled in prompt
order. The scoring work (keys of layer ``l``, ``W`` query rows) is in the FLOP count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dash_vl.methods.base import DecisionInputs, MethodKnobs, ScoredHalting

KERNEL_SIZE = 5


@dataclass(frozen=True)
class SnapKV(ScoredHalting):
    """Keep-score: the observation window's pooled, head-averaged attention on each token.

    Attributes:
        window: the observation window ``W``, in tokens (``HaltingConfig.observation_window``).
    """

    window: int = 64

    placement = "layer_input"

    @classmethod
    def from_config(cls, config: MethodKnobs) -> SnapKV:
        return cls(window=config.observation_window)

    def scoring_queries(self) -> int:
        return self.window

    def scores(self, inputs: DecisionInputs) -> torch.Tensor:
        shortest = min(inputs.valid_counts)
        if shortest <= self.window:
            raise ValueError(
                f"snapkv's observation window ({self.window} tokens, observation_window) needs prompts longer than "
                f"it; the shortest has {shortest} tokens"
            )
        attention = inputs.window_attention(self.window).mean(dim=2)
        prefix = attention[..., : -self.window]
        pooled = F.avg_pool1d(prefix, kernel_size=KERNEL_SIZE, padding=KERNEL_SIZE // 2, stride=1).mean(dim=1)
        return F.pad(pooled, (0, self.window), value=torch.inf)

"""A slow reference of halting for models with linear-attention (recurrent) layers: each prompt alone.

Masks cannot take a token out of a recurrence, so this reference removes halted tokens instead:
it shares no code with the engine and runs every prompt of a batch on its own, unpadded, through
HF's decoder layers one by one. Layers ``< l_s`` run on all its valid tokens; from ``l_s`` on the
layers run on the active tokens only, gathered in prompt order, so a linear layer's convolution
window and recurrent state (in the prompt's own ``DynamicCache``) see only them, and a full-attention
layer caches only their keys. At a full-attention ``l_s`` DASH's layer runs on every token (the
active ones keep that output) and caches the active tokens' keys; at a linear ``l_s`` the mixer
runs on every token for the score alone and the layer then runs on the active ones. Halted
tokens keep the state they entered ``l_s`` with. Decoding appends one token at a time to every
layer's cache, rotary ids going on after the prompt's largest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from dash_vl.hf_compat import cache_argument
from tests.reference import LanguageModelInputs, language_model_of


@dataclass
class PromptResult:
    """One prompt's reference run: ``logits`` ``(n, vocab)`` over its valid tokens, ``active`` ``(n,)`` bool,
    ``tokens`` ``(steps,)`` greedy, ``step_logits`` ``(steps, vocab)`` that chose them."""

    logits: torch.Tensor
    active: torch.Tensor
    tokens: torch.Tensor
    step_logits: torch.Tensor


@dataclass
class ActiveSequenceReference:
    model: object
    ratio: float
    start_layer: int
    eligible: torch.Tensor  # (B, T) bool, decided by the test
    given_active: torch.Tensor | None = None  # (B, T) bool chosen by the test (FastV's kept set)

    @property
    def lm(self):
        return language_model_of(self.model)

    def run(self, inputs: LanguageModelInputs, steps: int) -> list[PromptResult]:
        return [self.run_prompt(inputs, b, steps) for b in range(inputs.valid.shape[0])]

    def run_prompt(self, inputs: LanguageModelInputs, b: int, steps: int) -> PromptResult:
        valid = inputs.valid[b].nonzero().flatten()
        rope_rows = inputs.rope_ids if inputs.rope_ids.ndim == 3 else inputs.rope_ids[None].expand(3, -1, -1)
        hidden, rope_ids = inputs.embeds[b : b + 1, valid], rope_rows[:, b : b + 1, valid]
        layers, start, cache = self.lm.layers, self.start_layer, DynamicCache(config=self.lm.config)
        kinds = self.lm.config.layer_types
        with torch.no_grad():
            for index in range(start):
                hidden = self.layer(index, hidden, rope_ids, cache)
            frozen = hidden
            if self.given_active is not None:
                active = self.given_active[b, valid]
            else:
                update, full_output, scratch = self.split_layer(start, hidden, rope_ids)
                active = self.decide(update, self.eligible[b, valid])
            index_active = active.nonzero().flatten()
            compact, compact_rope = hidden[:, index_active], rope_ids[..., index_active]
            first_later = start
            if self.given_active is None and kinds[start] == "full_attention":
                keys, values = scratch.layers[start].keys, scratch.layers[start].values
                cache.update(keys[:, :, index_active], values[:, :, index_active], start)
                compact, first_later = full_output[:, index_active], start + 1
            for index in range(first_later, len(layers)):
                compact = self.layer(index, compact, compact_rope, cache)
            final = frozen.clone()
            final[:, index_active] = compact
            logits = self.model.lm_head(self.lm.norm(final))[0]
            tokens, step_logits = self.greedy(logits[-1], rope_ids.amax() + 1, cache, steps)
        return PromptResult(logits, active, tokens, step_logits)

    def layer(self, index: int, hidden: torch.Tensor, rope_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """Decoder layer ``index`` over ``hidden`` ``(1, n, D)``, causal, caching in ``cache``."""
        return self.lm.layers[index](
            hidden, attention_mask=self.mask(index, hidden.shape[1]), position_embeddings=self.lm.rotary_emb(hidden, rope_ids),
            **cache_argument(cache),
        )

    def mask(self, index: int, length: int) -> torch.Tensor | None:
        """A full-attention layer's causal ``(1, 1, n, n)`` mask (additive under eager); none for a linear layer
        (nothing is padding) or one query."""
        if self.lm.config.layer_types[index] == "linear_attention" or length == 1:
            return None
        allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
        if self.lm.config._attn_implementation == "eager":
            return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        return allowed

    def split_layer(self, index: int, hidden: torch.Tensor, rope_ids: torch.Tensor):
        """Layer ``index`` by hand over every token: ``(U, output, scratch cache holding its keys)``."""
        layer, scratch = self.lm.layers[index], DynamicCache(config=self.lm.config)
        normed = layer.input_layernorm(hidden)
        if hasattr(layer, "linear_attn"):
            update = layer.linear_attn(hidden_states=normed, attention_mask=None)
        else:
            update, _ = layer.self_attn(
                normed, attention_mask=self.mask(index, hidden.shape[1]),
                position_embeddings=self.lm.rotary_emb(hidden, rope_ids), **cache_argument(scratch),
            )
        hidden = hidden + update
        return update, hidden + layer.mlp(layer.post_attention_layernorm(hidden)), scratch

    def decide(self, update: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Active ``(n,)``: all but the ``floor(ratio * E)`` eligible tokens of lowest ``‖U‖``."""
        candidates = eligible.nonzero().flatten().tolist()
        scores = {t: float(update[0, t].double().norm()) for t in candidates}
        halted = sorted(candidates, key=lambda t: scores[t])[: math.floor(self.ratio * len(candidates) + 1e-9)]
        active = torch.ones(eligible.shape[0], dtype=torch.bool)
        active[halted] = False
        return active

    def greedy(self, last_logits: torch.Tensor, next_rope: torch.Tensor, cache: DynamicCache, steps: int):
        """``steps`` greedy tokens (end-of-sequence never chosen, as under ``min_new_tokens``) and their logits."""
        eos = self.model.generation_config.eos_token_id
        banned = torch.tensor(eos if isinstance(eos, list) else [eos])
        tokens, logits = [], [last_logits]
        for step in range(steps):
            token = logits[-1].index_fill(-1, banned, -torch.inf).argmax(dim=-1)
            tokens.append(token)
            hidden = self.lm.embed_tokens(token.view(1, 1))
            rope_ids = (next_rope + step).view(1, 1, 1).expand(3, 1, 1)
            for index in range(len(self.lm.layers)):
                hidden = self.layer(index, hidden, rope_ids, cache)
            logits.append(self.model.lm_head(self.lm.norm(hidden))[0, -1])
        return torch.stack(tokens), torch.stack(logits[:-1])


def assert_engine_matches(report, results: list[PromptResult], valid: torch.Tensor, logits, produced, steps: int) -> None:
    """Same kept positions, prefill logits on valid tokens, greedy tokens and per-step logits (fp32, 1e-5)."""
    for b, result in enumerate(results):
        positions = valid[b].nonzero().flatten()
        assert report.kept_positions[b] == positions[result.active].tolist()
        torch.testing.assert_close(logits[b, positions], result.logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(produced.sequences[b, -steps:], result.tokens)
        torch.testing.assert_close(torch.stack([step[b] for step in produced.logits]), result.step_logits, rtol=1e-5, atol=1e-5)

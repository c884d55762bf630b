"""A slow reference of halting that keeps the full sequence and masks halted tokens out.

It shares no code with the engine: it calls the HF decoder layers one by one over all ``T``
tokens with explicit 4-D masks, a full KV cache in every layer, and per-sample Python loops
for the halting decision. Halted tokens are frozen by overwriting their states after every
layer from ``l_s`` on, and hidden as keys from layers ``> l_s`` (and from layer ``l_s`` in
later calls, whose cache at ``l_s`` the engine keeps compact). Qwen3-VL's DeepStack terms are
added to every token after their layers, before halted tokens are overwritten: a halted token
keeps its state entering ``l_s`` and so none of the later terms.

Sliding-window layers (``config.layer_types``, or every layer where only ``config.sliding_window``
is set) mask keys ``sliding_window`` or more sequence indices back; the reference's cache keeps
every key of every layer, so its window lives in the masks alone. Gemma-3 layers (four norms)
are split into ``U = post_attention_layernorm(attention)`` and the normed MLP by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache

from dash_vl.hf_compat import cache_argument


@dataclass
class LanguageModelInputs:
    """What the outer model hands its language model at prefill.

    ``embeds`` ``(B, T, D)``; ``position_ids`` as handed over (``(4, B, T)`` for Qwen2-VL under
    generate, ``(B, T)`` for text LLMs); ``rope_ids`` the rotary ids (``(3, B, T)`` or ``(B, T)``);
    ``valid`` ``(B, T)`` bool; ``deepstack`` Qwen3-VL's DeepStack terms: per layer ``i`` a ``(B, T, D)``
    tensor added to the output of layer ``i`` (empty for other models), and ``deepstack_kwargs`` the
    keywords that carried them to the language model.
    """

    embeds: torch.Tensor
    position_ids: torch.Tensor
    rope_ids: torch.Tensor
    valid: torch.Tensor
    deepstack: list[torch.Tensor] = field(default_factory=list)
    deepstack_kwargs: dict = field(default_factory=dict)

    def prefix(self, length: int) -> LanguageModelInputs:
        return LanguageModelInputs(
            self.embeds[:, :length], self.position_ids[..., :length], self.rope_ids[..., :length], self.valid[:, :length],
            [term[:, :length] for term in self.deepstack],
        )


STEPS = 16


def generate(model, inputs, **kwargs):
    """``STEPS`` greedy tokens with their logits."""
    with torch.no_grad():
        return model.generate(
            **inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, output_logits=True,
            return_dict_in_generate=True, **kwargs
        )


def assert_ratio_zero_identical(model, inputs) -> None:
    """Under ``Halting(ratio=0)``: prefill logits on valid tokens, the ``STEPS`` greedy tokens and each step's
    logits bit-identical to the unmodified model (padding rows carry no meaning in either model)."""
    from dash_vl import Halting

    with torch.no_grad():
        expected_logits = model(**inputs).logits
    expected = generate(model, inputs)
    with Halting(model, ratio=0.0):
        with torch.no_grad():
            logits = model(**inputs).logits
        produced = generate(model, inputs)
    valid = inputs["attention_mask"].bool()
    assert torch.equal(logits[valid], expected_logits[valid])
    assert torch.equal(produced.sequences, expected.sequences)
    for step, expected_step in zip(produced.logits, expected.logits):
        assert torch.equal(step, expected_step)


def eligible_tokens(model, inputs, scope: str, question: str) -> torch.Tensor:
    """Written out independently of the engine: valid, not last, visual-only or not, question kept or not."""
    ids, valid = inputs["input_ids"], inputs["attention_mask"].bool()
    eligible = valid.clone()
    eligible[:, -1] = False
    visual = torch.zeros_like(valid)
    for name in ("image_token_id", "video_token_id"):
        token_id = getattr(model.config, name, None)
        if token_id is not None:
            visual |= ids == token_id
    if scope == "visual":
        eligible &= visual
    if question == "protected":
        for b in range(ids.shape[0]):
            last_visual = int(visual[b].nonzero().max())
            eligible[b, last_visual + 1 :] = False
    return eligible


def language_model_of(model):
    return getattr(model.model, "language_model", model.model)


def capture_language_model_inputs(model, inputs: dict) -> LanguageModelInputs:
    """Record the language model's inputs at the prefill of the unmodified model's ``generate``."""
    language_model = language_model_of(model)
    calls = []
    handle = language_model.register_forward_pre_hook(lambda m, a, kwargs: calls.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    handle.remove()
    prefill = calls[0]
    embeds = prefill.get("inputs_embeds")
    if embeds is None:
        embeds = language_model.embed_tokens(prefill["input_ids"])
    position_ids = prefill["position_ids"]
    rope_ids = position_ids[1:] if position_ids.ndim == 3 and position_ids.shape[0] == 4 else position_ids
    mask = prefill.get("attention_mask")
    valid = torch.ones(embeds.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    deepstack_kwargs = {name: prefill[name] for name in ("visual_pos_masks", "deepstack_visual_embeds") if prefill.get(name) is not None}
    return LanguageModelInputs(embeds, position_ids, rope_ids, valid, deepstack_terms(prefill, embeds), deepstack_kwargs)


def deepstack_terms(prefill: dict, embeds: torch.Tensor) -> list[torch.Tensor]:
    """Qwen3-VL's DeepStack features as ``(B, T, D)`` terms, written position by position: the ``r``-th
    visual position in row-major order (``visual_pos_masks``) takes row ``r`` of each layer's features."""
    features = prefill.get("deepstack_visual_embeds")
    if features is None:
        return []
    positions = prefill["visual_pos_masks"].nonzero().tolist()
    terms = []
    for feature in features:
        term = torch.zeros_like(embeds)
        for row, (b, t) in enumerate(positions):
            term[b, t] = feature[row]
        terms.append(term)
    return terms


def with_deepstack(inputs: LanguageModelInputs, index: int, hidden: torch.Tensor) -> torch.Tensor:
    """``hidden`` leaving layer ``index`` plus that layer's DeepStack term, where it has one."""
    return hidden + inputs.deepstack[index] if index < len(inputs.deepstack) else hidden


@dataclass
class MaskingReference:
    model: object
    ratio: float
    start_layer: int
    eligible: torch.Tensor  # (B, T) bool, decided by the test
    score: str = "delta_attention"  # delta_attention | delta_block | highest | random (seed 0)
    given_active: torch.Tensor | None = None  # (B, T) bool chosen by the test: halted before layer start_layer
    cache: DynamicCache = field(default_factory=DynamicCache)
    active: torch.Tensor | None = None  # (B, T) bool after prefill
    key_valid: torch.Tensor | None = None  # (B, S) bool, valid keys of all layers
    key_active: torch.Tensor | None = None  # (B, S) bool, keys visible in layers >= l_s
    next_rope: torch.Tensor | None = None  # (B,) next text position per sample

    @property
    def lm(self):
        return language_model_of(self.model)

    @property
    def layer_kinds(self) -> list[str]:
        config = self.lm.config
        if getattr(config, "layer_types", None) is not None:
            return list(config.layer_types)
        sliding = getattr(config, "sliding_window", None) is not None
        return ["sliding_attention" if sliding else "full_attention"] * config.num_hidden_layers

    def rotary(self, hidden: torch.Tensor, rope_ids: torch.Tensor) -> list:
        """``(cos, sin)`` of every layer, from its kind's rotary where the model has one per kind."""
        rotary = self.lm.rotary_emb
        if hasattr(rotary, "layer_types"):
            return [rotary(hidden, rope_ids, kind) for kind in self.layer_kinds]
        return [rotary(hidden, rope_ids)] * len(self.layer_kinds)

    def masks(self, query_len: int, visible: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`mask` of every layer, windowed on sliding-window layers."""
        window = getattr(self.lm.config, "sliding_window", None)
        return [
            self.mask(query_len, visible, window if kind == "sliding_attention" else None) for kind in self.layer_kinds
        ]

    def mask(self, query_len: int, visible: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """Causal mask of the last ``query_len`` queries over ``visible`` (``(B, S)`` bool) keys, plus the diagonal;
        keys ``window`` or more slots (= sequence indices: the reference keeps every token) back are hidden."""
        key_len = visible.shape[1]
        rows = []
        for q in range(query_len):
            query_slot = key_len - query_len + q
            row = visible.clone()
            row[:, query_slot + 1 :] = False
            if window is not None:
                row[:, : max(query_slot - window + 1, 0)] = False
            row[:, query_slot] = True
            rows.append(row)
        allowed = torch.stack(rows, dim=1)[:, None]
        if self.lm.config._attn_implementation == "eager":
            return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        return allowed

    def prefill(self, inputs: LanguageModelInputs) -> torch.Tensor:
        """Final normed states ``(B, T, D)`` of the prompt, halting at ``start_layer``."""
        hidden, valid = inputs.embeds, inputs.valid
        batch, seq_len = valid.shape
        rope = self.rotary(hidden, inputs.rope_ids)
        full = self.masks(seq_len, valid)
        layers, start = self.lm.layers, self.start_layer
        with torch.no_grad():
            for index in range(start):
                hidden = layers[index](
                    hidden, attention_mask=full[index], position_embeddings=rope[index], **cache_argument(self.cache)
                )
                hidden = with_deepstack(inputs, index, hidden)
            frozen = hidden
            if self.given_active is not None:
                active = valid & self.given_active
                first_later = start
            else:
                update, hidden = self.split_layer(start, hidden, full[start], rope[start])
                active = self.decide(update, hidden - frozen, valid)
                hidden = torch.where(active[..., None], with_deepstack(inputs, start, hidden), frozen)
                first_later = start + 1
            late = self.masks(seq_len, valid & active)
            for index in range(first_later, len(layers)):
                hidden = layers[index](
                    hidden, attention_mask=late[index], position_embeddings=rope[index], **cache_argument(self.cache)
                )
                hidden = torch.where(active[..., None], with_deepstack(inputs, index, hidden), frozen)
        self.active = active
        self.key_valid, self.key_active = valid, valid & active
        largest = inputs.rope_ids.amax(dim=-1)
        self.next_rope = (largest.amax(dim=0) if largest.ndim == 2 else largest) + 1  # text goes on after the largest id
        self.rope_rows = inputs.rope_ids.shape[0] if inputs.rope_ids.ndim == 3 else 0
        return self.lm.norm(hidden)

    def split_layer(self, index: int, hidden: torch.Tensor, mask: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index`` by hand, caching its keys: ``(U, output)``, ``U`` what its attention adds to the residual."""
        layer = self.lm.layers[index]
        update, _ = layer.self_attn(
            layer.input_layernorm(hidden), attention_mask=mask, position_embeddings=rope, **cache_argument(self.cache)
        )
        if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma-3: U is the normed attention output
            update = layer.post_attention_layernorm(update)
            hidden = hidden + update
            return update, hidden + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))
        hidden = hidden + update
        return update, hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def decide(self, update: torch.Tensor, block_delta: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Active ``(B, T)`` after halting the ``floor(ratio * E)`` lowest-scoring eligible tokens, one by one."""
        batch, seq_len = valid.shape
        random_scores = torch.zeros(batch, seq_len)
        for b in range(batch):  # per prompt, over its valid tokens in order
            random_scores[b, valid[b]] = torch.rand(int(valid[b].sum()), generator=torch.Generator().manual_seed(0))
        active = valid.clone()
        for b in range(batch):
            candidates = [t for t in range(seq_len) if self.eligible[b, t]]
            scores = {
                "delta_attention": {t: float(update[b, t].double().norm()) for t in candidates},
                "delta_block": {t: float(block_delta[b, t].double().norm()) for t in candidates},
                "highest": {t: -float(update[b, t].double().norm()) for t in candidates},
                "random": {t: float(random_scores[b, t]) for t in candidates},
            }[self.score]
            halted = sorted(candidates, key=lambda t: scores[t])[: math.floor(self.ratio * len(candidates) + 1e-9)]
            active[b, halted] = False
        return active

    def extend(self, embeds: torch.Tensor) -> torch.Tensor:
        """Final normed states ``(B, Q, D)`` of ``Q`` new tokens appended after the prompt."""
        query_len = embeds.shape[1]
        rope_ids = self.next_rope[:, None] + torch.arange(query_len)
        if self.rope_rows:
            rope_ids = rope_ids.expand(self.rope_rows, -1, -1)
        self.next_rope = self.next_rope + query_len
        self.append_keys(embeds.shape[0], query_len)
        rope = self.rotary(embeds, rope_ids)
        hidden = embeds
        with torch.no_grad():
            for index, layer in enumerate(self.lm.layers):
                mask = self.layer_masks(query_len, index)
                hidden = layer(hidden, attention_mask=mask, position_embeddings=rope[index], **cache_argument(self.cache))
        return self.lm.norm(hidden)

    def append_keys(self, batch: int, query_len: int) -> None:
        """New tokens are valid and visible in every layer."""
        new = torch.ones(batch, query_len, dtype=torch.bool)
        self.key_valid = torch.cat([self.key_valid, new], dim=1)
        self.key_active = torch.cat([self.key_active, new], dim=1)

    def layer_masks(self, query_len: int, index: int) -> torch.Tensor:
        """The mask of layer ``index`` in a later call: every valid key before ``l_s``, the active ones from it on."""
        return self.layer_mask(query_len, self.key_valid if index < self.start_layer else self.key_active, index)

    def layer_mask(self, query_len: int, visible: torch.Tensor, index: int) -> torch.Tensor:
        """:meth:`mask` of layer ``index``, windowed where it is a sliding-window layer."""
        window = getattr(self.lm.config, "sliding_window", None)
        return self.mask(query_len, visible, window if self.layer_kinds[index] == "sliding_attention" else None)

    def greedy(self, last_logits: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``steps`` greedy tokens ``(B, steps)`` after a prefill and the logits that chose each.

        End-of-sequence tokens are never chosen, as under ``generate(min_new_tokens=steps)``.
        """
        eos = self.model.generation_config.eos_token_id
        banned = torch.tensor(eos if isinstance(eos, list) else [eos])
        tokens, logits = [], [last_logits]
        for _ in range(steps):
            token = logits[-1].index_fill(-1, banned, -torch.inf).argmax(dim=-1)
            tokens.append(token)
            embeds = self.lm.embed_tokens(token[:, None])
            logits.append(self.model.lm_head(self.extend(embeds))[:, -1])
        return torch.stack(tokens, dim=1), logits[:-1]


def assert_engine_matches_reference(report, reference: MaskingReference, valid, logits, expected_logits, produced,
                                    expected_tokens, expected_step_logits, steps: int) -> None:
    """Same kept positions, prefill logits on valid tokens, greedy tokens and per-step logits (fp32, 1e-5)."""
    for b in range(valid.shape[0]):
        assert report.kept_positions[b] == reference.active[b].nonzero().flatten().tolist()
    torch.testing.assert_close(logits[valid], expected_logits[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(produced.sequences[:, -steps:], expected_tokens)
    for step, expected_step in zip(produced.logits, expected_step_logits):
        torch.testing.assert_close(step, expected_step, rtol=1e-5, atol=1e-5)

"""The halting engine: it owns the decoder loop of the language model.

Why one module of this size: :class:`HaltingEngine` is a single loop (prefill before ``l_s``, the
decision, the compact prefill after it, decoding on the split cache) whose steps share one state
per prompt (layouts, caches, the pending reports); each piece that stands on its own already lives
beside it in ``dash_vl/engine/`` (decision inputs, active set, layouts and packing, layer inputs,
masks, packed attention, decode kernels, FLOPs), so what is left here reads top to bottom as the
loop itself.

Prefill (empty cache):
  * layers ``[0, l_s)`` run on all ``T`` prompt tokens and cache all of them;
  * the policy (``dash_vl.methods``) decides which tokens stay active. For DASH and its
    ablations (placement ``"attention_update"``) the attention sub-layer of ``l_s`` runs over
    all ``T`` tokens first; its output ``U`` (after ``o_proj``, before the residual add) is what
    DASH scores (``Δattn = ‖U_t‖₂``), and halted tokens drop out before that residual add.
    For FastV and DART (placement ``"layer_input"``) the decision is made on what layers
    ``l_s - 1`` and ``l_s`` see, and only active tokens run layer ``l_s``; VisionZip decides the
    same way at ``l_s = 0`` from the vision encoder's evidence and merges dropped tokens into
    kept ones. Either way halted tokens keep the hidden state they had entering ``l_s``, frozen
    to the end;
  * active tokens are gathered into a compact left-padded tensor (prompt order kept, original
    rotary ids kept) and run the rest of the layers; layers ``>= l_s`` cache only active tokens;
  * a multi-stage method (``config.stage_layers``) decides again at each later decision layer,
    over the tokens still active, in the same way: each stage's layers run on and cache that
    stage's active tokens (:class:`CompactStage`), so layers cache different lengths.

What a model adds to the residual stream between its layers (Qwen3-VL's DeepStack features,
:mod:`dash_vl.engine.residual_additions`) is added after its layer to the tokens that layer ran on, in
their layout; halted tokens, frozen, receive none.

At ratio 0 nothing halts, so no decision is made: every layer runs on every prompt token (packed
where packing is on) and caches all of them, as the model itself does.

Later calls on the same cache (decoding, or appended text) run every new token through every
layer: layers ``< l_s`` attend over the full cache, the layers of each stage over its compact one.
No attention matrix is built, so any SDPA / FlashAttention kernel runs unchanged.

Packed prefill (``config.packing``, :mod:`dash_vl.engine.layouts`): the layers before and after ``l_s``
(and the attention of ``l_s`` over all ``T``) see only the batch's valid tokens, laid end to end
in one sequence with causal attention within each prompt (FlexAttention, :mod:`dash_vl.engine.packed_attention`, or
the model's FlashAttention varlen kernel), rotary ids kept per token. The halting decision, the KV
cache (written in the left-padded layouts above) and the returned states stay padded, so decoding
is the same in either mode.

On a static cache (``generate(cache_implementation="static")``) the prefill fills a dynamic cache
as above; then the layer-by-layer layout is decided once: layer ``i`` gets static buffers of its
prefill slots plus the new tokens the cache was sized for (:mod:`dash_vl.engine.static_slots`), and every
later call has fixed shapes and no host read. On a GPU, with ``config.compiled_decode``, a one-token
step is captured as a CUDA graph at the second step and replayed after (:mod:`dash_vl.engine.decode_graph`).
The engine keeps its latest layout and graph: a later ``generate`` call of the same shape refills those
buffers in place and replays that graph from its first step (:mod:`dash_vl.engine.static_decoder`).

A linear-attention layer (``"linear_attention"``: a recurrent token mixer, Qwen3.5's gated delta
net) caches a convolution window and a recurrent state, not keys; from ``l_s`` on it runs on the
active tokens only, so that state is the active sequence's. At a linear decision layer the mixer
runs over all ``T`` for the score alone and the whole layer then on the active tokens
(:meth:`HaltingEngine._finishes`). Under packing it runs padded, row by row (:meth:`HaltingEngine._run_layer`);
on a static cache its decode steps update the prefill's states in place (:class:`~dash_vl.engine.static_slots.StaticSlots`).

Each layer gets the mask and rotary embeddings of its kind (``config.layer_types``,
:mod:`dash_vl.engine.layer_inputs`): a sliding-window layer's window is measured in the sequence
positions its key slots hold, in the full-length and in the compact layout alike, and over the
latest slots only where HF's sliding-window cache keeps no more. FlashAttention cannot apply such
a window to a compact layout, so it is refused where the window is shorter than the sequence.
"""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

from dash_vl import hf_compat
from dash_vl.adapters.base import ModelAdapter
from dash_vl.config import HaltingConfig
from dash_vl.engine.active_set import ActiveSet, compact_layout, require_eligible
from dash_vl.engine.decision_inputs import DecisionProbe, KeyRecorder, PreviousLayer
from dash_vl.engine.decode_graph import DecodeGraph
from dash_vl.engine.decode_kernels import DECODE_SDPA_BACKENDS, decode_attention_kernels, decode_implementation
from dash_vl.engine.layer_inputs import KeyLayout, LayerInputs
from dash_vl.engine.layouts import Packing, PaddedLayout, TokenLayout, run_starts
from dash_vl.engine.masks import check_implementation, is_flash
from dash_vl.engine.packed_attention import PACKED_ATTENTION
from dash_vl.engine.prefill_flops import DecisionLayerWork, LayerShapes, prefill_flops
from dash_vl.engine.residual_additions import ResidualAdditions
from dash_vl.engine.static_decoder import StaticDecoder, storage_of
from dash_vl.engine.static_slots import SLOT_ATTENTION, StaticSlots
from dash_vl.engine.vision_evidence import EvidenceRecorder, evidence_over_prompt
from dash_vl.methods import METHODS, Decision
from dash_vl.report import HaltingReport

Evidence = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

UNSUPPORTED_OUTPUTS: tuple[str, ...] = ("output_attentions", "output_hidden_states")


@dataclass(frozen=True)
class PendingReport:
    """What one prefill's report is built from, on its way to the host.

    Attributes:
        masks: ``(2 + S, batch, T)`` bool over the context: valid, eligible, then the tokens active
            after each of the ``S`` decisions. On a GPU it is a pinned host tensor filled by a copy that
            does not block the host.
        copied: the CUDA event recorded after that copy; ``None`` where the masks were on the CPU.
        question_len: uncompressed question tokens that follow the context.
    """

    masks: torch.Tensor
    copied: torch.cuda.Event | None
    question_len: int

    @classmethod
    def queue(
        cls, token_valid: torch.Tensor, eligible: torch.Tensor, actives: list[torch.Tensor], question_len: int
    ) -> PendingReport:
        """Start copying the ``(batch, T)`` bool masks to the host; the host does not wait for it."""
        device = token_valid.device
        masks = torch.stack([token_valid, eligible.to(device), *(active.to(device) for active in actives)])
        if device.type != "cuda":
            return cls(masks, None, question_len)
        host_masks = masks.to("cpu", non_blocking=True)  # pinned destination: the copy is queued, not awaited
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(device))
        return cls(host_masks, copied, question_len)

    def host_masks(self) -> torch.Tensor:
        """:attr:`masks`, once the copy has arrived."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.masks


@dataclass
class CompactStage:
    """The key slots of the layers of one stage, from its decision layer to the next one.

    Attributes:
        first_layer: the stage's decision layer; its layers are ``[first_layer, next stage's)``.
        slot_valid: ``(batch, S)`` bool over the key slots of those layers; False on the left
            padding of the compact layout.
        slot_positions: ``(batch, S)`` long, the sequence index each of those slots holds (what a
            sliding window is measured in).
        compact_padded: whether :attr:`slot_valid` has padding; ``None`` where the policy did not
            report its kept counts, until the first later call reads it once.
    """

    first_layer: int
    slot_valid: torch.Tensor
    slot_positions: torch.Tensor
    compact_padded: bool | None

    def has_compact_padding(self) -> bool:
        if self.compact_padded is None:
            self.compact_padded = not bool(self.slot_valid.all())
        return self.compact_padded


@dataclass
class CompactCache:
    """Halting state that lives as long as one KV cache.

    Tokens that later calls append (decoding) are taken as valid, as ``generate``'s attention mask
    has them, so a decode step knows on the host which layers need a mask and never waits for the GPU.

    Attributes:
        stages: one per decision, in layer order: the key slots of its layers (the layers before
            the first decision layer cache the whole prompt).
        prompt_padded: whether the prompt's layout (the key slots of layers ``< l_s``) has padding.
    """

    stages: list[CompactStage]
    prompt_padded: bool

    def stage_of(self, layer_index: int) -> CompactStage | None:
        """The stage whose layers include ``layer_index``; ``None`` before the first decision layer."""
        found = None
        for stage in self.stages:
            if stage.first_layer <= layer_index:
                found = stage
        return found


@dataclass(frozen=True)
class StageTokens:
    """The tokens one group of layers runs on: the prompt before the first decision, the tokens still
    active after each one, in the ``(batch, K)`` left-padded layout (prompt order kept).

    Attributes:
        keys: their key slots (validity, prompt positions) for the masks.
        layout: the layout the layers run them in (padded, or packed).
        rope_ids: ``(..., batch, K)`` their rotary ids, padded layout.
        eligible: ``(batch, K)`` bool, those the policy may still halt.
        additions: what the model adds to their residual stream after some layers (DeepStack), padded layout.
        valid_counts, eligible_counts: per sample, on the host (empty after the last decision).
    """

    keys: KeyLayout
    layout: TokenLayout
    rope_ids: torch.Tensor
    eligible: torch.Tensor
    additions: ResidualAdditions
    valid_counts: list[int]
    eligible_counts: list[int]


def gather_tokens(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Select, per sample, the positions ``index`` (``(batch, K)``) along ``dim`` of ``tensor``.

    ``tensor`` is ``(batch, T, ...)`` for ``dim=1`` or ``(batch, heads, T, ...)`` for ``dim=2``;
    for rotary ids ``(..., batch, T)`` use ``dim=-1``.
    """
    if dim == -1:
        return tensor.gather(-1, index.expand(*tensor.shape[:-2], *index.shape))
    shape = list(tensor.shape)
    shape[dim] = index.shape[1]
    view = [index.shape[0]] + [1] * (tensor.ndim - 1)
    view[dim] = index.shape[1]
    return tensor.gather(dim, index.view(view).expand(shape))


def layout_of(
    packed: bool, keys: KeyLayout, counts: list[int] | None, starts: list[int] | None = None, left_padded: bool = False
) -> TokenLayout:
    """The layout layers run ``keys``' slots in: padded, or packed (``counts``: valid slots per sample,
    ``None`` where the host must count them; ``starts``: each sample's first valid slot where all are
    one run, or ``left_padded``: every sample's slots end at the last one, as in the compact layout)."""
    if not packed:
        return PaddedLayout(keys)
    counts = counts if counts is not None else keys.valid.sum(dim=1).tolist()
    if left_padded:
        starts = [keys.valid.shape[1] - count for count in counts]
    return Packing(keys.valid, counts, starts)


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a tensor, a tuple of tensors, a host int or ``None``) on ``device``."""
    if isinstance(value, tuple):
        return tuple(part.to(device) for part in value)
    return value.to(device) if isinstance(value, torch.Tensor) else value


class HaltingEngine:
    """Runs a language model's decoder stack with token halting at one or several decision layers.

    Use it through :class:`dash_vl.Halting`, which installs :meth:`forward` in place of the
    language model's own (and, for a policy that reads the vision encoder, sets
    :attr:`evidence_recorder`).
    """

    def __init__(self, adapter: ModelAdapter, config: HaltingConfig) -> None:
        check_implementation(adapter.attn_implementation)
        adapter.layer_types  # refuses layer kinds the engine cannot mask, before any call
        if config.scope == "visual" and not adapter.has_visual_tokens:
            raise ValueError(
                f"scope='visual' needs a model with visual tokens; {type(adapter.model).__name__} is text-only"
            )
        self.adapter = adapter
        self.config = config
        self.method = METHODS[config.method].from_config(config)
        self.num_layers = len(adapter.layers)
        self.decision_layers = config.decision_layers(self.num_layers)
        """The layer of every decision, ascending (one for a single-shot method)."""
        self.start_layer = self.decision_layers[0]
        self.shapes = LayerShapes.from_config(adapter.text_config, output_gate=adapter.attention_output_gate)
        self.layer_windows = adapter.layer_windows
        """Per layer, its sliding window in positions (``None``: full attention), for the FLOP count."""
        self.linear_layers = tuple(kind == "linear_attention" for kind in adapter.layer_types)
        """Per layer, whether it is a linear-attention layer (a recurrent token mixer), for the FLOP count."""
        self.decision_work = DecisionLayerWork(
            attends_all=self.method.placement != "layer_input", mlp_on_all=self.method.needs_block_update,
            scoring_queries=self.method.scoring_queries(),
        ) if config.ratio > 0 else DecisionLayerWork(attends_all=False, mlp_on_all=False)
        """What a decision layer runs beyond its stage's tokens, for the FLOP count: nothing at ratio 0, where
        no decision is made."""
        self._reports: list[HaltingReport] = []
        self._pending_reports: list[PendingReport] = []
        self.prompt_input_ids: torch.Tensor | None = None
        self.question_tokens: int | None = None
        self.evidence_recorder: EvidenceRecorder | None = None
        self.decode_backends = DECODE_SDPA_BACKENDS
        """SDPA backends of decode steps on a GPU, where a FlashAttention model decodes through SDPA too
        (:mod:`dash_vl.engine.decode_kernels`); ``None``: the model's own implementation and PyTorch's choice."""
        self._compact: weakref.WeakKeyDictionary[Any, CompactCache] = weakref.WeakKeyDictionary()
        self._static: weakref.WeakKeyDictionary[Any, StaticDecoder] = weakref.WeakKeyDictionary()
        """Per static cache after its prefill, the decoder whose buffers it was laid out in."""
        self._decoder: StaticDecoder | None = None
        """The latest static layout and its recorded step, for the next prefill of the same signature."""

    @property
    def reports(self) -> list[HaltingReport]:
        """One report per prefill, oldest first.

        A prefill only queues a copy of its masks to the host; the reports are built here, when
        first read. So no prefill makes the host wait for the GPU or build lists while the GPU
        idles, neither at its end nor at the start of the next one.
        """
        self._reports.extend(self._report(pending) for pending in self._pending_reports)
        self._pending_reports.clear()
        return self._reports

    # ----------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Drop-in for the HF language model's ``forward`` (same arguments, same output).

        The KV cache comes in ``kwargs`` under either name transformers has used for it
        (``cache`` or ``past_key_values``, see :mod:`dash_vl.hf_compat`) and goes back out under
        the installed release's name.
        """
        cache = hf_compat.pop_cache(kwargs)
        for name in UNSUPPORTED_OUTPUTS:
            if kwargs.get(name):
                raise ValueError(f"{name}=True is not supported while halting is applied")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden = self.adapter.embed(input_ids) if inputs_embeds is None else inputs_embeds
        additions = self.adapter.residual_additions(hidden, kwargs)
        batch_size, new_len = hidden.shape[:2]
        decoder = self._static.get(cache) if cache is not None else None
        if decoder is not None:
            decoder.check_serves(cache)
            if additions:
                raise ValueError(
                    "a decode step over a static cache cannot add visual features (DeepStack) to its tokens; "
                    "generate without cache_implementation"
                )
            slots = decoder.slots
            rope_ids = self.adapter.rope_position_ids(position_ids, batch_size, new_len, slots.span + slots.written, hidden.device)
            return hf_compat.model_output(self._static_extend(hidden, rope_ids, decoder), cache)
        static_cache = cache if hf_compat.is_static_cache(cache) else None
        if static_cache is not None:  # the prefill fills a dynamic cache; the static layout follows it
            self._check_static_decoding(static_cache)
            attention_mask = hf_compat.prompt_validity(attention_mask, batch_size, new_len, hidden.device)
            cache, use_cache = hf_compat.full_length_cache(self.adapter.text_config), True
        use_cache = self.adapter.text_config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = hf_compat.new_cache(self.adapter.text_config)
        past_len = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(batch_size, past_len + new_len, dtype=torch.bool, device=hidden.device)
        token_valid = attention_mask.bool()
        rope_ids = self.adapter.rope_position_ids(position_ids, batch_size, new_len, past_len, hidden.device)

        if past_len == 0:
            prompt_ids = input_ids if input_ids is not None else self.prompt_input_ids
            hidden = self._prefill(hidden, token_valid, rope_ids, cache, prompt_ids, additions)
        else:
            hidden = self._extend(hidden, token_valid, rope_ids, cache, self._compact.get(cache), additions)
        if static_cache is not None:
            self._lay_out_static(static_cache, cache, token_valid)
            cache = static_cache
        return hf_compat.model_output(self.adapter.final_norm(hidden), cache if use_cache else None)

    # ----------------------------------------------------------------------------------------
    def _prefill(
        self,
        hidden: torch.Tensor,
        token_valid: torch.Tensor,
        rope_ids: torch.Tensor,
        cache: Any,
        prompt_ids: torch.Tensor | None,
        additions: ResidualAdditions,
    ) -> torch.Tensor:
        """Halting prefill of ``hidden`` ``(batch, T, D)``; returns final states ``(batch, T, D)``."""
        seq_len = hidden.shape[1]
        visual = self.adapter.visual_mask(prompt_ids)
        question = self._question_mask(visual, token_valid)
        eligible = self._eligible(visual, token_valid, question)
        evidence = self._vision_evidence(prompt_ids)
        if self.config.question != "after_context":
            hidden, actives = self._halting_pass(hidden, token_valid, rope_ids, cache, eligible, additions, evidence)
            self._pending_reports.append(PendingReport.queue(token_valid, eligible, actives, question_len=0))
            return hidden
        if cache is None:
            cache = hf_compat.new_cache(self.adapter.text_config)
        context_len = seq_len - int(question.sum(dim=1).max())
        if context_len < 1:
            raise ValueError(f"the question covers the whole prompt ({seq_len} tokens); nothing is left to halt")
        if evidence is not None:
            evidence = tuple(part[:, :context_len] for part in evidence)
        context, actives = self._halting_pass(
            hidden[:, :context_len], token_valid[:, :context_len], rope_ids[..., :context_len], cache,
            eligible[:, :context_len], additions.tokens(0, context_len), evidence,
        )
        tail = self._extend(
            hidden[:, context_len:], token_valid, rope_ids[..., context_len:], cache, self._compact.get(cache),
            additions.tokens(context_len, seq_len),
        )
        self._pending_reports.append(
            PendingReport.queue(
                token_valid[:, :context_len], eligible[:, :context_len], actives, question_len=seq_len - context_len
            )
        )
        return torch.cat([context, tail], dim=1)

    def _vision_evidence(self, prompt_ids: torch.Tensor | None) -> Evidence | None:
        """The encoder evidence of this prompt laid over it, for a policy that reads it; else ``None``."""
        if self.evidence_recorder is None:
            return None
        recorded = self.evidence_recorder.take()
        if not any(recorded.values()) or prompt_ids is None:
            raise ValueError(
                f"method {self.config.method!r} reads the vision encoder: call the whole model on a prompt with "
                "images or videos (its language model alone has no encoder evidence)"
            )
        token_ids = {modality: getattr(self.adapter.model.config, f"{modality}_token_id", None) for modality in recorded}
        return evidence_over_prompt(recorded, prompt_ids, token_ids)

    def _halting_pass(
        self, hidden: torch.Tensor, token_valid: torch.Tensor, rope_ids: torch.Tensor, cache: Any, eligible: torch.Tensor,
        additions: ResidualAdditions, evidence: Evidence | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Layers ``[0, L)`` over a prompt, halting at each decision layer; returns ``(batch, T, D)`` and,
        per decision, the tokens active after it, ``(batch, T)`` bool. At ratio 0 nothing halts and no
        decision is made: every layer runs on every token and caches all of them, as in the model
        itself (packed or padded alike), and the one mask returned is ``token_valid``.

        Each decision (one per entry of :attr:`decision_layers`) is made over the tokens the layers
        before it ran on; the tokens it keeps are gathered into a compact left-padded layout that
        the layers up to the next decision run on and cache. Halted tokens keep the state they had
        entering their decision layer. ``additions`` (DeepStack's visual features) are added after
        their layers to the tokens those layers run on, gathered with the active ones.

        The host reads the per-sample token counts once, before the first layer; after that it
        never waits for the GPU where the policy reports its kept counts (DASH does), so the
        compact layers are queued while the full-length ones still run. Packed
        (:meth:`_runs_packed`), the layers before and after each decision see only the valid tokens
        laid end to end; the decisions, the KV cache and the result stay in the padded layout.
        """
        counted = [token_valid.sum(dim=1), eligible.sum(dim=1)]
        if self.config.packing != "off":  # where the valid slots start, read in the same transfer
            counted.append(run_starts(token_valid))
        valid_counts, eligible_counts, *starts = torch.stack(counted).tolist()
        require_eligible(eligible_counts, self.config.ratio)
        seq_len = hidden.shape[1]
        packed = self._runs_packed(valid_counts, seq_len)
        full_keys = KeyLayout.sequence(token_valid, all_valid=min(valid_counts) == seq_len)
        full_starts = starts[0] if packed and min(starts[0]) >= 0 else None
        full_layout = layout_of(packed, full_keys, valid_counts, full_starts)
        states = full_layout.pack(hidden)
        full = full_layout.inputs(self.adapter, states, full_layout.pack_ids(rope_ids))
        if self.config.ratio == 0:  # nothing halts: every layer as the model runs it, no decision
            with self._packed_attention() if packed else nullcontext():
                states = self._every_layer(states, full, full_layout, cache, additions)
            return full_layout.unpack(states), [token_valid] * len(self.decision_layers)
        working_cache = cache if cache is not None else hf_compat.new_cache(self.adapter.text_config)
        stage = StageTokens(full_keys, full_layout, rope_ids, eligible, additions, valid_counts, eligible_counts)
        inputs, first = full, 0
        frozen: list[tuple[torch.Tensor, ActiveSet]] = []
        compact_stages: list[CompactStage] = []
        with self._packed_attention() if packed else nullcontext():
            for number, layer_index in enumerate(self.decision_layers):
                states, previous = self._layers(states, inputs, stage, working_cache, first, layer_index)
                probe = self._decision_probe(
                    states, previous, stage, inputs, layer_index, number, eligible_counts,
                    evidence if number == 0 else None,
                )
                decision = self.method.decide(probe, self.config.ratio)
                active, active_counts = self._active_tokens(probe, decision, stage.valid_counts)
                stage = self._next_stage(stage, probe, decision, active, active_counts, packed, seq_len)
                states = self._compact_states(probe, decision, active, working_cache, stage.layout)
                if self._finishes(layer_index):
                    states = stage.additions.after(layer_index, states, stage.layout)
                inputs = stage.layout.inputs(self.adapter, states, stage.layout.pack_ids(stage.rope_ids))
                frozen.append((probe.hidden_states, active))
                compact_valid = stage.keys.all_valid
                compact_stages.append(CompactStage(
                    layer_index, stage.keys.valid, stage.keys.positions, None if compact_valid is None else not compact_valid
                ))
                first = layer_index + 1 if self._finishes(layer_index) else layer_index
            states, _ = self._layers(states, inputs, stage, working_cache, first, self.num_layers)
        if cache is not None:
            self._compact[cache] = CompactCache(compact_stages, prompt_padded=min(valid_counts) < seq_len)
        final = stage.layout.unpack(states)
        for entering, active in reversed(frozen):
            final = self._write_back_active(entering, final, active)
        actives = [
            torch.zeros_like(token_valid).scatter_(
                1, compact.slot_positions.to(token_valid.device), compact.slot_valid.to(token_valid.device)
            )
            for compact in compact_stages
        ]
        return final, actives

    def _next_stage(
        self, stage: StageTokens, probe: DecisionProbe, decision: Decision, active: ActiveSet,
        active_counts: list[int] | None, packed: bool, seq_len: int,
    ) -> StageTokens:
        """The tokens still active after ``decision`` over ``stage``: their key slots, layout, rotary ids and
        the eligible ones among them, with their counts on the host where a later decision needs them
        (read from the GPU only where the policy did not report them)."""
        compact_valid = None if active_counts is None else min(active_counts) == active.index.shape[1]
        positions = gather_tokens(probe.positions, active.index, dim=1)
        keys = KeyLayout(active.slot_valid, positions, compact_valid, span=seq_len)
        layout = layout_of(packed, keys, active_counts, left_padded=True)
        rope_ids = gather_tokens(stage.rope_ids.to(active.index.device), active.index, dim=-1)
        eligible = gather_tokens(probe.eligible & decision.kept, active.index, dim=1) & active.slot_valid
        additions = stage.additions.gathered(active)
        if probe.stage == len(self.decision_layers) - 1:
            return StageTokens(keys, layout, rope_ids, eligible, additions, [], [])
        valid_counts = active_counts if active_counts is not None else active.slot_valid.sum(dim=1).tolist()
        eligible_counts = decision.kept_counts if decision.kept_counts is not None else eligible.sum(dim=1).tolist()
        return StageTokens(keys, layout, rope_ids, eligible, additions, valid_counts, eligible_counts)

    def _every_layer(
        self, states: torch.Tensor, inputs: LayerInputs, layout: TokenLayout, cache: Any, additions: ResidualAdditions
    ) -> torch.Tensor:
        """Layers ``[0, L)`` over every token of ``states`` (in ``layout``: ``(batch, T, D)`` padded, ``(1, N, D)``
        packed, as ``inputs``), each caching all of them in ``cache`` (``None``: no cache) and followed by its
        ``additions``; what ratio 0 runs."""
        layer_cache = layout.cache(cache)
        for index in range(self.num_layers):
            states = self._run_layer(index, states, inputs, layout, layer_cache, cache)
            states = additions.after(index, states, layout)
        return states

    def _layers(
        self, states: torch.Tensor, inputs: LayerInputs, stage: StageTokens, cache: Any, first: int, last: int
    ) -> tuple[torch.Tensor, PreviousLayer | None]:
        """Layers ``[first, last)`` over every token of ``states`` (in ``stage.layout``: ``(batch, K, D)`` padded,
        ``(1, N, D)`` packed; ``inputs`` its masks and rotary), each caching all of them in ``cache``
        (the ``(batch, K)`` padded cache, filled through ``layout``) and followed by its ``stage.additions``.

        Returns:
            The states leaving layer ``last - 1``, in ``layout``; and what that layer saw (states
            ``(batch, K, D)``, keys ``(batch, kv_heads, K, head_dim)``, rotary, window), in the padded
            layout; ``None`` where no layer ran.
        """
        layout = stage.layout
        layer_cache = layout.cache(cache)
        for index in range(first, last):
            entering, recorder = states, KeyRecorder(layer_cache)
            states = self._run_layer(index, states, inputs, layout, recorder, cache)
            states = stage.additions.after(index, states, layout)
        if last == first:
            return states, None
        rotary = tuple(layout.unpack(part) for part in inputs.position_embeddings(self.adapter.layer_types[last - 1]))
        keys = None if recorder.keys is None else layout.unpack_heads(recorder.keys)
        previous = PreviousLayer(layout.unpack(entering), keys, rotary, self.adapter.layer_windows[last - 1])
        return states, previous

    def _run_layer(
        self, index: int, states: torch.Tensor, inputs: LayerInputs, layout: TokenLayout, layer_cache: Any, cache: Any
    ) -> torch.Tensor:
        """Decoder layer ``index`` over ``states`` in ``layout`` (``inputs`` its masks and rotary).

        An attention layer caches through ``layer_cache`` (``layout``'s view of ``cache``). A linear-attention
        layer's convolution (and its PyTorch delta rule) runs each row as one sequence, so it runs row by row
        (:meth:`~dash_vl.engine.layouts.TokenLayout.run_by_row`: padded, its padding zeroed, under packing
        too) and keeps its states per sample in ``cache``, the ``(batch, S)`` padded cache itself
        (``None``: no cache); it has no rotary.
        """
        layer = self.adapter.layers[index]
        if not self.linear_layers[index]:
            return layer(states, **hf_compat.cache_argument(layer_cache), **inputs.for_layer(index))

        def recurrence(rows: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
            return layer(rows, position_embeddings=None, attention_mask=padding, **hf_compat.cache_argument(cache))

        return layout.run_by_row(recurrence, states)

    def _decision_probe(
        self,
        states: torch.Tensor,
        previous: PreviousLayer | None,
        stage: StageTokens,
        inputs: LayerInputs,
        layer_index: int,
        number: int,
        initial_eligible_counts: list[int],
        evidence: Evidence | None,
    ) -> DecisionProbe:
        """The inputs of decision ``number`` at ``layer_index``, moved to that layer's device: under a
        device_map it may sit on another GPU than the layers before it.

        Args:
            states: entering the layer, in ``stage.layout`` (``(batch, K, D)`` padded, ``(1, N, D)`` packed).
            previous: what layer ``layer_index - 1`` saw (stays where it is); ``None`` where it did not
                run on these tokens.
            stage: the tokens the decision is over.
            inputs: their masks and rotary embeddings, in ``stage.layout``.
            initial_eligible_counts: eligible tokens per sample at the first decision, on the host.
            evidence: the encoder's evidence over the prompt, where a policy reads it (first decision only).

        Returns:
            The probe, its states ``(batch, K, D)`` in the padded layout.
        """
        device = next(self.adapter.layers[layer_index].parameters()).device
        keys, layout = stage.keys, stage.layout
        states, valid, eligible, positions = (part.to(device) for part in (states, keys.valid, stage.eligible, keys.positions))
        decision_inputs = {name: to_device(value, device) for name, value in inputs.for_layer(layer_index).items()}
        rotary = tuple(
            layout.unpack(part).to(device) for part in inputs.position_embeddings(self.adapter.layer_types[layer_index])
        )
        return DecisionProbe(
            self.adapter, layer_index, layout.unpack(states), previous, valid, eligible, stage.eligible_counts,
            decision_inputs, layout, states, to_device(evidence, device), stage.valid_counts, positions, rotary, number,
            initial_eligible_counts,
        )

    @staticmethod
    def _active_tokens(
        probe: DecisionProbe, decision: Decision, valid_counts: list[int]
    ) -> tuple[ActiveSet, list[int] | None]:
        """The tokens that run on past the decision: valid ones the policy kept or may not halt, in a compact
        left-padded ``(batch, K)`` set; and how many per sample, on the host where the policy reported its
        kept counts (``None`` where only the GPU knows them)."""
        active_counts = None
        if decision.kept_counts is not None:
            active_counts = [v - e + k for v, e, k in zip(valid_counts, probe.eligible_counts, decision.kept_counts)]
        active = compact_layout(
            probe.valid & (decision.kept | ~probe.eligible), width=None if active_counts is None else max(active_counts)
        )
        return active, active_counts

    def _finishes(self, layer_index: int) -> bool:
        """Whether decision layer ``layer_index``'s attention runs over all ``T`` tokens before the decision and
        the rest of the layer over the active ones (placement ``"attention_update"``), so the compact layers
        follow it. Not at a linear-attention layer: its mixer runs over all ``T`` for the score only, and the
        whole layer then runs on the active tokens, so that its recurrent state is theirs alone."""
        return self.method.placement == "attention_update" and self.adapter.layer_types[layer_index] != "linear_attention"

    def _compact_states(
        self, probe: DecisionProbe, decision: Decision, active: ActiveSet, cache: Any, layout: TokenLayout
    ) -> torch.Tensor:
        """The active tokens' states where the compact layers take over, in ``layout`` (``(batch, K, D)``
        padded, ``(1, N', D)`` packed): leaving ``l_s`` where its attention ran on all ``T`` (placement
        ``"attention_update"``), else entering it (as the policy changed them, where it did)."""
        if self._finishes(probe.layer_index):
            return self._finish_decision_layer(probe, active, cache, layout)
        entering = probe.hidden_states if decision.states is None else decision.states
        return layout.pack(gather_tokens(entering, active.index, dim=1))

    @staticmethod
    def _write_back_active(hidden: torch.Tensor, compact: torch.Tensor, active: ActiveSet) -> torch.Tensor:
        """The final states ``(batch, T, D)``: ``hidden`` (entering ``l_s``, what halted tokens keep) with the
        active tokens' ``compact`` ``(batch, K, D)`` written over theirs.

        Under a device_map the last layer may sit on another GPU: the frozen states join it there.
        Padding slots hold halted positions; they write back the frozen state they already have.
        """
        device = compact.device
        hidden = hidden.to(device, copy=True)
        index = active.index.to(device)
        written = torch.where(active.slot_valid.to(device)[..., None], compact, gather_tokens(hidden, index, dim=1))
        hidden.scatter_(1, index[..., None].expand_as(written), written)
        return hidden

    def _packed_attention(self) -> AbstractContextManager[None]:
        """The attention of packed layers: the model's own FlashAttention (its varlen path, given the
        sequence lengths), else the FlexAttention function :data:`dash_vl.engine.packed_attention.PACKED_ATTENTION`."""
        if is_flash(self.adapter.attn_implementation):
            return nullcontext()
        return hf_compat.attention_implementation(self.adapter.text_config, PACKED_ATTENTION)

    def _runs_packed(self, valid_counts: list[int], seq_len: int) -> bool:
        """Whether this prefill runs packed under ``config.packing``: ``"always"``, or ``"ragged"`` and
        some prompt is shorter than ``seq_len`` (``valid_counts``: valid tokens per sample).

        Raises:
            ValueError: packed, where a sliding window is shorter than the prompt or the layers
                sit on several devices.
        """
        mode = self.config.packing
        if mode == "off" or (mode == "ragged" and min(valid_counts) == seq_len):
            return False
        window = self.adapter.window_shorter_than(seq_len)
        if window is not None:
            raise ValueError(
                f"packed prefill cannot apply a sliding window ({window}) shorter than the prompt ({seq_len} tokens); "
                "use packing='off'"
            )
        devices = {next(layer.parameters()).device for layer in self.adapter.layers}
        if len(devices) > 1:
            raise ValueError(f"packed prefill needs every decoder layer on one device, got {sorted(map(str, devices))}")
        return True

    def _finish_decision_layer(
        self, probe: DecisionProbe, active: ActiveSet, cache: Any, layout: TokenLayout
    ) -> torch.Tensor:
        """Rest of the decision layer for the active tokens after its attention ran on all ``T``; caches their
        K/V there; returns the compact states leaving ``l_s`` in ``layout`` (``(batch, K, D)`` padded)."""
        update = probe.attention_update()
        if cache is not None:
            cache.update(
                gather_tokens(probe.capture.key, active.index, dim=2),
                gather_tokens(probe.capture.value, active.index, dim=2),
                probe.layer_index,
            )
        if probe.block_output is not None:
            return layout.pack(gather_tokens(probe.block_output, active.index, dim=1))
        compact = gather_tokens(probe.hidden_states, active.index, dim=1) + gather_tokens(update, active.index, dim=1)
        return self.adapter.feed_forward(probe.layer, layout.pack(compact))

    def _extend(
        self, hidden: torch.Tensor, token_valid: torch.Tensor, rope_ids: torch.Tensor, cache: Any, compact: CompactCache | None,
        additions: ResidualAdditions,
    ) -> torch.Tensor:
        """New tokens ``(batch, Q, D)`` through every layer after a prefill, each layer followed by its
        ``additions`` to them; ``token_valid`` is ``(batch, P + Q)``.

        A layer whose cache keeps only its latest slots (sliding window) attends over those and the new ones;
        a layer of a decision's stage (:class:`CompactStage`) over that stage's compact slots.
        """
        new_len = hidden.shape[1]
        prompt_valid = None if compact is None else not compact.prompt_padded
        full_layout = KeyLayout.sequence(token_valid, all_valid=prompt_valid)
        full = LayerInputs(self.adapter, hidden, rope_ids, full_layout)
        stage_inputs: dict[int, LayerInputs] = {}
        for stage in compact.stages if compact is not None else []:
            stage.slot_valid = torch.cat([stage.slot_valid, token_valid[:, -new_len:]], dim=1)
            stage.slot_positions = torch.cat([stage.slot_positions, full_layout.positions[:, -new_len:]], dim=1)
            keys = KeyLayout(stage.slot_valid, stage.slot_positions, not stage.has_compact_padding(), span=full_layout.span)
            stage_inputs[stage.first_layer] = full.over(keys)
        implementation = decode_implementation(self.decode_backends, self.adapter.attn_implementation, new_len)
        with (
            hf_compat.attention_implementation(self.adapter.text_config, implementation),
            decode_attention_kernels(self.decode_backends, implementation, hidden.device, new_len),
        ):
            for index, layer in enumerate(self.adapter.layers):
                stage = compact.stage_of(index) if compact is not None else None
                inputs = full if stage is None else stage_inputs[stage.first_layer]
                key_length = hf_compat.cached_length(cache, index) + new_len
                hidden = layer(hidden, **inputs.for_layer(index, key_length), **hf_compat.cache_argument(cache))
                hidden = additions.after(index, hidden)
        return hidden

    # ----------------------------------------------------------------------------------------
    def _check_static_decoding(self, cache: Any) -> None:
        """Refuse a static ``cache`` where its layout cannot hold: one already written (outside the engine), or
        decoder layers on several devices (a graph records one device's work)."""
        hf_compat.static_capacity(cache)
        devices = {next(layer.parameters()).device for layer in self.adapter.layers}
        if len(devices) > 1:
            raise ValueError(
                f"a static cache while halting needs every decoder layer on one device, got {sorted(map(str, devices))}; "
                "generate without cache_implementation"
            )

    def _layer_layouts(self, token_valid: torch.Tensor, compact: CompactCache | None) -> list[KeyLayout]:
        """Per decoder layer, the key layout its prefill slots are in: the prompt's ``(batch, T)`` before the
        first decision layer, then each stage's compact one from its decision layer to the next (every layer
        the prompt's where nothing was halted). Layers given the same object share their slot bookkeeping in
        the static layout."""
        full = KeyLayout.sequence(token_valid, all_valid=None)
        if compact is None:
            return [full] * self.num_layers
        span = token_valid.shape[1]
        stage_layouts = {
            id(stage): KeyLayout(stage.slot_valid, stage.slot_positions, None, span=span) for stage in compact.stages
        }
        layouts = []
        for index in range(self.num_layers):
            stage = compact.stage_of(index)
            layouts.append(full if stage is None else stage_layouts[id(stage)])
        return layouts

    def _lay_out_static(self, static_cache: Any, prefilled: Any, token_valid: torch.Tensor) -> None:
        """Decide the layer-by-layer static layout once, after the prefill into the dynamic ``prefilled``:
        layer ``i`` gets buffers of its ``P_i`` prefill slots plus the new tokens ``static_cache`` was sized
        for, filled from ``prefilled``, and ``static_cache``'s layers hold them (``token_valid``: ``(batch, T)``).

        Where the latest layout has the same signature (:meth:`StaticSlots.signature` and the addresses of the
        language model's weights), its buffers take this prefill in place and keep their recorded step;
        otherwise they are freed first and new ones are laid out."""
        span = token_valid.shape[1]
        capacity = hf_compat.static_capacity(static_cache) - span
        layouts = self._layer_layouts(token_valid, self._compact.pop(prefilled, None))
        text_model = self.adapter.text_model
        signature = (
            StaticSlots.signature(prefilled, layouts, span, capacity),
            storage_of([*text_model.parameters(), *text_model.buffers()]),
        )
        decoder = self._decoder
        if decoder is not None and decoder.signature == signature:
            decoder.slots.refill(prefilled, layouts)
            decoder.serve(static_cache)
        else:
            self._decoder = None  # the previous layout's buffers and graph go before new ones are allocated
            slots = StaticSlots(prefilled, layouts, self.adapter.layer_windows, span, capacity)
            decoder = self._decoder = StaticDecoder(signature, slots, static_cache)
        slots = decoder.slots
        hf_compat.install_static_layers(static_cache, slots.keys, slots.values, slots.counters(), slots.recurrent)
        self._static[static_cache] = decoder

    def _static_extend(self, hidden: torch.Tensor, rope_ids: torch.Tensor, decoder: StaticDecoder) -> torch.Tensor:
        """New tokens ``(batch, Q, D)`` through every layer over the static layout; returns the final states
        after the norm. On a GPU with ``config.compiled_decode``, one-token steps run as a CUDA graph: the
        decoder's first eagerly (the warm-up), the second records the graph, every later one replays it,
        in later ``generate`` calls of the same signature too."""
        slots = decoder.slots
        slots.reserve(hidden.shape[1])
        if not self.config.compiled_decode or hidden.shape[1] != 1 or not DecodeGraph.supported(hidden.device):
            return self._static_step(hidden, rope_ids, slots)
        if decoder.graph is None:
            if not decoder.warmed:
                decoder.warmed = True
                return self._static_step(hidden, rope_ids, slots)
            decoder.graph = DecodeGraph(lambda states, ids: self._static_step(states, ids, slots), hidden, rope_ids)
        if not decoder.graph.fits(hidden, rope_ids):
            return self._static_step(hidden, rope_ids, slots)
        return decoder.graph(hidden, rope_ids)

    def _static_step(self, hidden: torch.Tensor, rope_ids: torch.Tensor, slots: StaticSlots) -> torch.Tensor:
        """One call's device work over the static layout: ``hidden`` ``(batch, Q, D)`` and its rotary ids
        ``(..., batch, Q)`` through every layer, each writing its new slots in place and attending over its
        whole buffer (:func:`dash_vl.engine.static_slots.slot_attention`); the final states after the norm.
        A linear-attention layer updates its states in place (:attr:`StaticSlots.recurrent_cache`)."""
        new_len = hidden.shape[1]
        masks = slots.begin(new_len)
        kinds = self.adapter.layer_types
        rotary = {
            kind: self.adapter.position_embeddings(hidden, rope_ids, kind) for kind in dict.fromkeys(kinds) if kind != "linear_attention"
        }
        with hf_compat.attention_implementation(self.adapter.text_config, SLOT_ATTENTION):
            for index, layer in enumerate(self.adapter.layers):
                linear = self.linear_layers[index]
                hidden = layer(
                    hidden, attention_mask=None if linear else masks[index], position_embeddings=rotary.get(kinds[index]),
                    **hf_compat.cache_argument(slots.recurrent_cache if linear else slots),
                )
        slots.finish(new_len)
        return self.adapter.final_norm(hidden)

    # ----------------------------------------------------------------------------------------
    def _question_mask(self, visual: torch.Tensor | None, token_valid: torch.Tensor) -> torch.Tensor:
        """``(batch, T)`` bool over the question: the trailing ``question_tokens`` if set, else the text after the last visual token."""
        batch_size, seq_len = token_valid.shape
        positions = torch.arange(seq_len, device=token_valid.device).expand(batch_size, -1)
        if self.question_tokens is not None:
            return positions >= seq_len - self.question_tokens
        if self.config.question == "halted":
            return positions >= seq_len - 1
        if visual is None or not bool(visual.any(dim=1).all()):
            raise ValueError(
                f"question={self.config.question!r} needs visual tokens in every prompt to find where the question "
                "starts, or an explicit length: `with halting.question_length(n): ...`"
            )
        last_visual = torch.where(visual, positions, -1).max(dim=1).values
        return positions > last_visual[:, None]

    def _eligible(self, visual: torch.Tensor | None, token_valid: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """``(batch, T)`` bool: tokens the policy may halt under ``scope`` and ``question``."""
        eligible = token_valid.clone()
        eligible[:, -1] = False
        if self.config.question != "halted":
            eligible &= ~question
        if self.config.scope == "visual":
            if visual is None:
                raise ValueError(
                    "scope='visual' needs the prompt's input_ids and a model with visual tokens; "
                    f"{type(self.adapter.model).__name__} got none"
                )
            eligible &= visual
        return eligible

    def _report(self, pending: PendingReport) -> HaltingReport:
        """The report of one prefill from its masks over the context (valid, eligible, active tokens per decision)."""
        token_valid, eligible, *actives = pending.host_masks()
        question_len, layers = pending.question_len, self.decision_layers
        halted_per_layer = [0.0] * self.num_layers
        full_per_layer = [0.0] * self.num_layers
        for sample, valid_row in enumerate(token_valid):
            halted, full = prefill_flops(
                self.shapes, self.layer_windows, self.linear_layers, layers, self.decision_work,
                valid_row.nonzero().flatten(), [active[sample].nonzero().flatten() for active in actives], question_len,
            )
            halted_per_layer = [total + flops for total, flops in zip(halted_per_layer, halted)]
            full_per_layer = [total + flops for total, flops in zip(full_per_layer, full)]
        bounds = [*layers, self.num_layers]
        per_stage = [
            sum(halted_per_layer[bounds[s] : bounds[s + 1]]) / sum(full_per_layer[bounds[s] : bounds[s + 1]])
            for s in range(len(layers))
        ]
        prompt = [tokens + question_len for tokens in token_valid.sum(dim=1).tolist()]
        kept = [[keep + question_len for keep in active.sum(dim=1).tolist()] for active in actives]
        per_layer = [prompt] * layers[0]
        for stage, (first, last) in enumerate(zip(bounds, bounds[1:])):
            per_layer += [kept[stage]] * (last - first)
        seq_len = token_valid.shape[1]
        tail = list(range(seq_len, seq_len + question_len))
        positions = [[row.nonzero().flatten().tolist() + tail for row in active] for active in actives]
        return HaltingReport(
            start_layer=layers[0],
            prompt_tokens=prompt,
            eligible_tokens=eligible.sum(dim=1).tolist(),
            kept_tokens_per_layer=per_layer,
            kept_positions=positions[-1],
            relative_flops=sum(halted_per_layer) / sum(full_per_layer),
            ratio=self.config.ratio,
            decision_layers=list(layers),
            kept_positions_per_stage=positions,
            relative_flops_per_stage=per_stage,
        )

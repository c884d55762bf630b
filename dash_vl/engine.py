"""The halting engine: it owns the decoder loop of the language model.

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
    rotary ids kept) and run the rest of the layers; layers ``>= l_s`` cache only active tokens.

At ratio 0 nothing halts, so no decision is made: every layer runs on every prompt token (packed
where packing is on) and caches all of them, as the model itself does.

Later calls on the same cache (decoding, or appended text) run every new token through every
layer: layers ``< l_s`` attend over the full cache, layers ``>= l_s`` over the compact one.
No attention matrix is built, so any SDPA / FlashAttention kernel runs unchanged.

Packed prefill (``config.packing``, :mod:`dash_vl.packing`): the layers before and after ``l_s``
(and the attention of ``l_s`` over all ``T``) see only the batch's valid tokens, laid end to end
in one sequence with causal attention within each prompt (FlexAttention, :mod:`dash_vl.flex`, or
the model's FlashAttention varlen kernel), rotary ids kept per token. The halting decision, the KV
cache (written in the left-padded layouts above) and the returned states stay padded, so decoding
is the same in either mode.

Each layer gets the mask and rotary embeddings of its kind (``config.layer_types``,
:mod:`dash_vl.layer_inputs`): a sliding-window layer's window is measured in the sequence
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
from dash_vl.adapter import ModelAdapter
from dash_vl.config import HaltingConfig
from dash_vl.decision import DecisionProbe, KeyRecorder, PreviousLayer
from dash_vl.decode_kernels import DECODE_SDPA_BACKENDS, decode_attention_kernels, decode_implementation
from dash_vl.flex import PACKED_ATTENTION
from dash_vl.layer_inputs import KeyLayout, LayerInputs
from dash_vl.masks import check_implementation, is_flash
from dash_vl.methods import METHODS, Decision
from dash_vl.packing import Packing, PaddedLayout, TokenLayout, run_starts
from dash_vl.prefill_flops import DecisionLayerWork, LayerShapes, prefill_flops
from dash_vl.report import HaltingReport
from dash_vl.selection import ActiveSet, compact_layout, require_eligible
from dash_vl.vision_evidence import EvidenceRecorder, evidence_over_prompt

Evidence = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

UNSUPPORTED_OUTPUTS: tuple[str, ...] = ("output_attentions", "output_hidden_states")


@dataclass(frozen=True)
class PendingReport:
    """What one prefill's report is built from, on its way to the host.

    Attributes:
        masks: ``(3, batch, T)`` bool over the context: valid, eligible and active tokens. On a
            GPU it is a pinned host tensor filled by a copy that does not block the host.
        copied: the CUDA event recorded after that copy; ``None`` where the masks were on the CPU.
        question_len: uncompressed question tokens that follow the context.
    """

    masks: torch.Tensor
    copied: torch.cuda.Event | None
    question_len: int

    @classmethod
    def queue(cls, token_valid: torch.Tensor, eligible: torch.Tensor, active: torch.Tensor, question_len: int) -> PendingReport:
        """Start copying the ``(batch, T)`` bool masks to the host; the host does not wait for it."""
        device = token_valid.device
        masks = torch.stack([token_valid, eligible.to(device), active.to(device)])
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
class CompactCache:
    """Halting state that lives as long as one KV cache.

    Tokens that later calls append (decoding) are taken as valid, as ``generate``'s attention mask
    has them, so a decode step knows on the host which layers need a mask and never waits for the GPU.

    Attributes:
        slot_valid: ``(batch, S)`` bool over the key slots of layers ``>= l_s``; False on the
            left padding of the compact layout.
        slot_positions: ``(batch, S)`` long, the sequence index each of those slots holds (what a
            sliding window is measured in).
        prompt_padded: whether the prompt's layout (the key slots of layers ``< l_s``) has padding.
        compact_padded: whether :attr:`slot_valid` has padding; ``None`` where the policy did not
            report its kept counts, until the first later call reads it once.
    """

    slot_valid: torch.Tensor
    slot_positions: torch.Tensor
    prompt_padded: bool
    compact_padded: bool | None

    def has_compact_padding(self) -> bool:
        if self.compact_padded is None:
            self.compact_padded = not bool(self.slot_valid.all())
        return self.compact_padded


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
    """Runs a language model's decoder stack with single-shot token halting.

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
        self.start_layer = config.decision_layer(self.num_layers)
        self.shapes = LayerShapes.from_config(adapter.text_config)
        self.layer_windows = adapter.layer_windows
        """Per layer, its sliding window in positions (``None``: full attention), for the FLOP count."""
        self.decision_work = DecisionLayerWork(
            attends_all=self.method.placement != "layer_input", mlp_on_all=self.method.needs_block_update
        )
        self._reports: list[HaltingReport] = []
        self._pending_reports: list[PendingReport] = []
        self.prompt_input_ids: torch.Tensor | None = None
        self.question_tokens: int | None = None
        self.evidence_recorder: EvidenceRecorder | None = None
        self.decode_backends = DECODE_SDPA_BACKENDS
        """SDPA backends of decode steps on a GPU, where a FlashAttention model decodes through SDPA too
        (:mod:`dash_vl.decode_kernels`); ``None``: the model's own implementation and PyTorch's choice."""
        self._compact: weakref.WeakKeyDictionary[Any, CompactCache] = weakref.WeakKeyDictionary()

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
        if getattr(cache, "is_compileable", False):
            raise ValueError(
                f"halting needs a dynamic KV cache, got {type(cache).__name__}: from l_s on the layers cache only "
                "the active tokens, a length that a static cache (cache_implementation='static', torch.compile) "
                "fixes in advance for every layer; generate without cache_implementation"
            )
        for name in UNSUPPORTED_OUTPUTS:
            if kwargs.get(name):
                raise ValueError(f"{name}=True is not supported while halting is applied")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        hidden = self.adapter.embed(input_ids) if inputs_embeds is None else inputs_embeds
        batch_size, new_len = hidden.shape[:2]
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
            hidden = self._prefill(hidden, token_valid, rope_ids, cache, prompt_ids)
        else:
            hidden = self._extend(hidden, token_valid, rope_ids, cache, self._compact.get(cache))
        return hf_compat.model_output(self.adapter.final_norm(hidden), cache if use_cache else None)

    # ----------------------------------------------------------------------------------------
    def _prefill(
        self,
        hidden: torch.Tensor,
        token_valid: torch.Tensor,
        rope_ids: torch.Tensor,
        cache: Any,
        prompt_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Halting prefill of ``hidden`` ``(batch, T, D)``; returns final states ``(batch, T, D)``."""
        seq_len = hidden.shape[1]
        visual = self.adapter.visual_mask(prompt_ids)
        question = self._question_mask(visual, token_valid)
        eligible = self._eligible(visual, token_valid, question)
        evidence = self._vision_evidence(prompt_ids)
        if self.config.question != "after_context":
            hidden, active = self._halting_pass(hidden, token_valid, rope_ids, cache, eligible, evidence)
            self._pending_reports.append(PendingReport.queue(token_valid, eligible, active, question_len=0))
            return hidden
        if cache is None:
            cache = hf_compat.new_cache(self.adapter.text_config)
        context_len = seq_len - int(question.sum(dim=1).max())
        if context_len < 1:
            raise ValueError(f"the question covers the whole prompt ({seq_len} tokens); nothing is left to halt")
        if evidence is not None:
            evidence = tuple(part[:, :context_len] for part in evidence)
        context, active = self._halting_pass(
            hidden[:, :context_len], token_valid[:, :context_len], rope_ids[..., :context_len], cache,
            eligible[:, :context_len], evidence,
        )
        tail = self._extend(hidden[:, context_len:], token_valid, rope_ids[..., context_len:], cache, self._compact.get(cache))
        self._pending_reports.append(
            PendingReport.queue(
                token_valid[:, :context_len], eligible[:, :context_len], active, question_len=seq_len - context_len
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
        evidence: Evidence | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers ``[0, L)`` over a prompt, halting at ``l_s``; returns ``(batch, T, D)`` and the active
        tokens ``(batch, T)`` bool. At ratio 0 nothing halts and no decision is made: every layer runs
        on every token and caches all of them, as in the model itself (packed or padded alike).

        The host reads the per-sample token counts once, before the first layer; after that it
        never waits for the GPU where the policy reports its kept counts (DASH does), so the
        compact layers are queued while the full-length ones still run. Packed
        (:meth:`_runs_packed`), the layers before and after ``l_s`` see only the valid tokens laid
        end to end; the decision, the KV cache and the result stay in the padded layout.
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
                states = self._every_layer(states, full, full_layout.cache(cache))
            return full_layout.unpack(states), token_valid
        early_cache = full_layout.cache(cache if cache is not None else hf_compat.new_cache(self.adapter.text_config))
        with self._packed_attention() if packed else nullcontext():
            states, previous = self._full_length_layers(states, full, full_layout, early_cache)
            probe, rope_ids = self._decision_probe(
                states, previous, token_valid, eligible, eligible_counts, rope_ids, full, full_layout, evidence
            )
            decision = self._decide(probe)
            active, active_counts = self._active_tokens(probe, decision, valid_counts)
            compact_valid = None if active_counts is None else min(active_counts) == active.index.shape[1]
            late_keys = KeyLayout(active.slot_valid, active.index, compact_valid, span=seq_len)
            late_layout = layout_of(packed, late_keys, active_counts, left_padded=True)
            compact = self._compact_states(probe, decision, active, cache, late_layout)
            if cache is not None:
                self._compact[cache] = CompactCache(
                    active.slot_valid, active.index, prompt_padded=min(valid_counts) < seq_len,
                    compact_padded=None if compact_valid is None else not compact_valid,
                )
            compact = self._compact_layers(compact, rope_ids, active, cache, late_layout)
        return self._write_back_active(probe.hidden_states, late_layout.unpack(compact), active), active.active

    def _every_layer(self, states: torch.Tensor, inputs: LayerInputs, cache: Any) -> torch.Tensor:
        """Layers ``[0, L)`` over every token of ``states`` (``(batch, T, D)`` padded, ``(1, N, D)`` packed,
        as ``inputs``), each caching all of them in ``cache`` (``None``: no cache); what ratio 0 runs."""
        for index, layer in enumerate(self.adapter.layers):
            states = layer(states, **hf_compat.cache_argument(cache), **inputs.for_layer(index))
        return states

    def _full_length_layers(
        self, states: torch.Tensor, full: LayerInputs, layout: TokenLayout, cache: Any
    ) -> tuple[torch.Tensor, PreviousLayer | None]:
        """Layers ``[0, l_s)`` over every token of ``states`` (in ``layout``: ``(batch, T, D)`` padded,
        ``(1, N, D)`` packed), each caching all of them in ``cache``.

        Returns:
            The states entering ``l_s``, in ``layout``; and what layer ``l_s - 1`` saw (states
            ``(batch, T, D)``, keys ``(batch, kv_heads, T, head_dim)``, rotary, window), in the
            padded layout; ``None`` at ``l_s = 0``.
        """
        layers, start = self.adapter.layers, self.start_layer
        for index in range(start):
            entering, recorder = states, KeyRecorder(cache)
            states = layers[index](states, **hf_compat.cache_argument(recorder), **full.for_layer(index))
        if start == 0:
            return states, None
        rotary = tuple(layout.unpack(part) for part in full.position_embeddings(self.adapter.layer_types[start - 1]))
        previous = PreviousLayer(
            layout.unpack(entering), layout.unpack_heads(recorder.keys), rotary, self.adapter.layer_windows[start - 1]
        )
        return states, previous

    def _decision_probe(
        self,
        states: torch.Tensor,
        previous: PreviousLayer | None,
        token_valid: torch.Tensor,
        eligible: torch.Tensor,
        eligible_counts: list[int],
        rope_ids: torch.Tensor,
        full: LayerInputs,
        layout: TokenLayout,
        evidence: Evidence | None,
    ) -> tuple[DecisionProbe, torch.Tensor]:
        """The decision inputs of layer ``l_s``, moved to that layer's device: under a device_map it may
        sit on another GPU than the layers before it.

        Args:
            states: entering ``l_s``, in ``layout`` (``(batch, T, D)`` padded, ``(1, N, D)`` packed).
            previous: what layer ``l_s - 1`` saw (stays where it is); ``None`` at ``l_s = 0``.
            token_valid, eligible: ``(batch, T)`` bool.
            eligible_counts: eligible tokens per sample, on the host.
            rope_ids: ``(..., batch, T)`` rotary ids of the prompt.
            full: the full-length layers' mask and rotary embeddings, in ``layout``.
            evidence: the encoder's evidence over the prompt, where a policy reads it.

        Returns:
            The probe (its states ``(batch, T, D)`` in the padded layout) and ``rope_ids`` on that device.
        """
        device = next(self.adapter.layers[self.start_layer].parameters()).device
        states, token_valid, eligible, rope_ids = (part.to(device) for part in (states, token_valid, eligible, rope_ids))
        hidden = layout.unpack(states)
        decision_inputs = {name: to_device(value, device) for name, value in full.for_layer(self.start_layer).items()}
        probe = DecisionProbe(
            self.adapter, self.start_layer, hidden, previous, token_valid, eligible, eligible_counts, decision_inputs, layout,
            states, to_device(evidence, device),
        )
        return probe, rope_ids

    def _decide(self, probe: DecisionProbe) -> Decision:
        """The policy's decision over the ``(batch, T)`` prompt at ``l_s``; at ratio 0 every eligible token is kept."""
        if self.config.ratio > 0:
            return self.method.decide(probe, self.config.ratio)
        return Decision(probe.eligible, kept_counts=probe.eligible_counts)

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

    @property
    def _finishes_decision_layer(self) -> bool:
        """Whether layer ``l_s``'s attention runs over all ``T`` tokens before the decision and the rest of
        the layer over the active ones (placement ``"attention_update"``), so the compact layers follow it."""
        return self.method.placement == "attention_update"

    def _compact_states(
        self, probe: DecisionProbe, decision: Decision, active: ActiveSet, cache: Any, layout: TokenLayout
    ) -> torch.Tensor:
        """The active tokens' states where the compact layers take over, in ``layout`` (``(batch, K, D)``
        padded, ``(1, N', D)`` packed): leaving ``l_s`` where its attention ran on all ``T`` (placement
        ``"attention_update"``), else entering it (as the policy changed them, where it did)."""
        if self._finishes_decision_layer:
            return self._finish_decision_layer(probe, active, cache, layout)
        entering = probe.hidden_states if decision.states is None else decision.states
        return layout.pack(gather_tokens(entering, active.index, dim=1))

    def _compact_layers(
        self, compact: torch.Tensor, rope_ids: torch.Tensor, active: ActiveSet, cache: Any, layout: TokenLayout
    ) -> torch.Tensor:
        """The layers after the decision over the active tokens only, caching only them.

        ``compact`` is in ``layout`` (``(batch, K, D)`` padded, ``(1, N', D)`` packed), ``rope_ids``
        ``(..., batch, T)`` the prompt's; returns the states leaving the last layer, in ``layout``.
        """
        compact_rope = layout.pack_ids(gather_tokens(rope_ids, active.index, dim=-1))
        inputs = layout.inputs(self.adapter, compact, compact_rope)
        late_cache = layout.cache(cache)
        layers = self.adapter.layers
        first = self.start_layer + 1 if self._finishes_decision_layer else self.start_layer
        for index in range(first, self.num_layers):
            compact = layers[index](compact, **inputs.for_layer(index), **hf_compat.cache_argument(late_cache))
        return compact

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
        sequence lengths), else the FlexAttention function :data:`dash_vl.flex.PACKED_ATTENTION`."""
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
        """Rest of layer ``l_s`` for the active tokens after its attention ran on all ``T``; caches their
        K/V at ``l_s``; returns the compact states leaving ``l_s`` in ``layout`` (``(batch, K, D)`` padded)."""
        update = probe.attention_update()
        if cache is not None:
            cache.update(
                gather_tokens(probe.capture.key, active.index, dim=2),
                gather_tokens(probe.capture.value, active.index, dim=2),
                self.start_layer,
            )
        if probe.block_output is not None:
            return layout.pack(gather_tokens(probe.block_output, active.index, dim=1))
        compact = gather_tokens(probe.hidden_states, active.index, dim=1) + gather_tokens(update, active.index, dim=1)
        return self.adapter.feed_forward(probe.layer, layout.pack(compact))

    def _extend(
        self, hidden: torch.Tensor, token_valid: torch.Tensor, rope_ids: torch.Tensor, cache: Any, compact: CompactCache | None
    ) -> torch.Tensor:
        """New tokens ``(batch, Q, D)`` through every layer after a prefill; ``token_valid`` is ``(batch, P + Q)``.

        A layer whose cache keeps only its latest slots (sliding window) attends over those and the new ones.
        """
        new_len = hidden.shape[1]
        prompt_valid = None if compact is None else not compact.prompt_padded
        full_layout = KeyLayout.sequence(token_valid, all_valid=prompt_valid)
        full = LayerInputs(self.adapter, hidden, rope_ids, full_layout)
        late = full
        if compact is not None:
            compact.slot_valid = torch.cat([compact.slot_valid, token_valid[:, -new_len:]], dim=1)
            compact.slot_positions = torch.cat([compact.slot_positions, full_layout.positions[:, -new_len:]], dim=1)
            late = full.over(
                KeyLayout(
                    compact.slot_valid, compact.slot_positions, not compact.has_compact_padding(), span=full_layout.span
                )
            )
        implementation = decode_implementation(self.decode_backends, self.adapter.attn_implementation, new_len)
        with (
            hf_compat.attention_implementation(self.adapter.text_config, implementation),
            decode_attention_kernels(self.decode_backends, implementation, hidden.device, new_len),
        ):
            for index, layer in enumerate(self.adapter.layers):
                inputs = full if index < self.start_layer else late
                key_length = hf_compat.cached_length(cache, index) + new_len
                hidden = layer(hidden, **inputs.for_layer(index, key_length), **hf_compat.cache_argument(cache))
        return hidden

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
        """The report of one prefill from its masks over the context (valid, eligible, active tokens)."""
        token_valid, eligible, active = pending.host_masks()
        question_len = pending.question_len
        context = token_valid.sum(dim=1).tolist()
        kept = active.sum(dim=1).tolist()
        start = self.start_layer
        halted_flops = full_flops = 0.0
        for valid_row, active_row in zip(token_valid, active):
            halted, full = prefill_flops(
                self.shapes, self.layer_windows, start, self.decision_work,
                valid_row.nonzero().flatten(), active_row.nonzero().flatten(), question_len,
            )
            halted_flops, full_flops = halted_flops + halted, full_flops + full
        prompt = [tokens + question_len for tokens in context]
        kept = [keep + question_len for keep in kept]
        per_layer = [prompt] * start + [kept] * (self.num_layers - start)
        seq_len = token_valid.shape[1]
        positions = [
            row.nonzero().flatten().tolist() + list(range(seq_len, seq_len + question_len)) for row in active
        ]
        return HaltingReport(
            start_layer=start,
            prompt_tokens=prompt,
            eligible_tokens=eligible.sum(dim=1).tolist(),
            kept_tokens_per_layer=per_layer,
            kept_positions=positions,
            relative_flops=halted_flops / full_flops,
        )

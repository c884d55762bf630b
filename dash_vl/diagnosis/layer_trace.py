"""One prompt through the unmodified decoder stack, layer by layer, with what the diagnosis reads.

:func:`trace_prompt` installs a per-layer loop in place of the language model's ``forward``
(as :class:`dash_vl.Halting` installs the engine), calls the whole model once, and restores
the model's own ``forward``. Each layer runs through the adapter exactly as HF runs it
(attention sub-layer, residual add, feed-forward, then what the model adds after it: Qwen3-VL's
DeepStack features); nothing is halted. Per layer it records
the attention update's norm, the residual stream's norm, and the attention each key receives
from all queries and from the last one, computed from the layer's own queries
(:meth:`ModelAdapter.attention_queries`) and the keys the layer computed (``k_proj``, ``k_norm``
where present, rotary), caught from its cache call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from dash_vl import hf_compat
from dash_vl.adapters.base import ModelAdapter
from dash_vl.diagnosis.attention_received import attention_received
from dash_vl.engine.decision_inputs import KeyValueCapture
from dash_vl.engine.layer_inputs import KeyLayout, LayerInputs


@dataclass(frozen=True)
class LayerTrace:
    """What every layer of the unmodified model did to one prompt of ``T`` tokens (``L`` layers, float32, CPU).

    Attributes:
        delta_attn: ``(L, T)``: ``‖U_t‖₂`` of layer ``l``'s attention output before the residual add.
        hidden_norm: ``(L, T)``: ``‖h_t‖₂`` of the residual stream entering layer ``l``.
        received: ``(L, T)``: attention received by key ``t`` in layer ``l`` (sum over queries, mean over heads).
        last_query: ``(L, T)``: the attention the prompt's last token (whose next-token prediction
            starts the answer) gives key ``t`` in layer ``l``, mean over heads; each row sums to 1.
        input_ids: ``(T,)`` token ids; ``None`` where the model was given embeddings only.
        visual: ``(T,)`` bool, True on visual tokens; ``None`` for a text-only family.
    """

    delta_attn: torch.Tensor
    hidden_norm: torch.Tensor
    received: torch.Tensor
    last_query: torch.Tensor
    input_ids: torch.Tensor | None
    visual: torch.Tensor | None

    @property
    def num_tokens(self) -> int:
        return self.delta_attn.shape[1]


class LayerTracer:
    """A drop-in for the language model's ``forward`` (batch 1, no padding, no cache) that records
    per-layer norms and received attention while computing the unmodified output."""

    def __init__(self, adapter: ModelAdapter, chunk: int) -> None:
        self.adapter = adapter
        self.chunk = chunk
        self.records: list[tuple[torch.Tensor, ...]] = []

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if hf_compat.pop_cache(kwargs) is not None:
            raise ValueError("the diagnosis traces a prefill from scratch; pass no KV cache")
        hidden = self.adapter.embed(input_ids) if inputs_embeds is None else inputs_embeds
        additions = self.adapter.residual_additions(hidden, kwargs)
        batch_size, seq_len = hidden.shape[:2]
        if batch_size != 1:
            raise ValueError(f"the diagnosis traces one prompt at a time; got a batch of {batch_size}")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("the diagnosis traces unpadded prompts; the attention mask has padding")
        check_window(self.adapter, seq_len)
        rope_ids = self.adapter.rope_position_ids(position_ids, 1, seq_len, 0, hidden.device)
        valid = torch.ones(1, seq_len, dtype=torch.bool, device=hidden.device)
        layer_inputs = LayerInputs(self.adapter, hidden, rope_ids, KeyLayout.sequence(valid, all_valid=True))
        delta_attn, hidden_norm, received, last_query = [], [], [], []
        for index, layer in enumerate(self.adapter.layers):
            attention_kwargs = layer_inputs.for_layer(index)
            capture = KeyValueCapture()
            update = self.adapter.attention_update(layer, hidden, **hf_compat.cache_argument(capture), **attention_kwargs)
            queries = self.adapter.attention_queries(layer, hidden, attention_kwargs["position_embeddings"])
            received.append(attention_received(queries[0], capture.key[0], self.chunk).cpu())
            last_query.append(attention_received(queries[0, :, -1:], capture.key[0], first_query=seq_len - 1).cpu())
            delta_attn.append(update[0].float().norm(dim=-1).cpu())
            hidden_norm.append(hidden[0].float().norm(dim=-1).cpu())
            hidden = additions.after(index, self.adapter.feed_forward(layer, hidden + update))
        self.records.append(tuple(torch.stack(rows) for rows in (delta_attn, hidden_norm, received, last_query)))
        return hf_compat.model_output(self.adapter.final_norm(hidden), None)


def check_window(adapter: ModelAdapter, seq_len: int) -> None:
    """Refuse a prompt longer than a sliding-window layer's window (the received attention assumes full causal attention)."""
    window = adapter.window_shorter_than(seq_len)
    if window is not None:
        raise ValueError(f"the prompt ({seq_len} tokens) is longer than the sliding window ({window}) of a layer")


@contextmanager
def tracing(adapter: ModelAdapter, chunk: int) -> Iterator[LayerTracer]:
    """Within the block the language model's ``forward`` is a :class:`LayerTracer`'s."""
    tracer = LayerTracer(adapter, chunk)
    adapter.text_model.forward = tracer.forward
    try:
        yield tracer
    finally:
        del adapter.text_model.forward


def trace_prompt(adapter: ModelAdapter, inputs: Mapping[str, torch.Tensor], chunk: int = 128) -> LayerTrace:
    """Call the whole model once on ``inputs`` (batch 1: what its tokenizer or processor returns)
    and return the trace of its language model.

    Raises:
        ValueError: for a batch above 1, padding, or a prompt longer than a sliding window.
    """
    with tracing(adapter, chunk) as tracer, torch.no_grad():
        adapter.model(**inputs, use_cache=False)
    input_ids = inputs.get("input_ids")
    visual = adapter.visual_mask(input_ids)
    return LayerTrace(
        *tracer.records[-1],
        input_ids=None if input_ids is None else input_ids[0].cpu(),
        visual=None if visual is None else visual[0].cpu(),
    )

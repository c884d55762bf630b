"""Packed prefill through a FlashAttention implementation: the varlen path instead of FlexAttention.

No FlashAttention kernel runs on the CPU, so HF's flash path is given a reference kernel (exact
attention with SDPA, FlashAttention's calling convention and bottom-right causal alignment) in
place of the package it would import; everything above the kernel (HF's unpadding, its varlen
dispatch, the engine's keywords) is the real code. ``eval/bench_flash4.py`` runs the real kernel
(FlashAttention-4) on the GPU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as flash_utils

from dash_vl import Halting
from dash_vl.engine.decode_kernels import DECODE_SDPA_BACKENDS
from tests.engine.test_packed import (  # noqa: F401 (fixture)
    TEXT_LENGTHS,
    assert_packed_matches_padded,
    packed_calls,
    ragged_prompts,
    text_model,
)
from tests.engine.test_static_decode import assert_same_decoding, halted_on_both_caches
from tests.reference import generate


def reference_flash(query, key, value, causal: bool = True, softmax_scale: float | None = None, **_) -> torch.Tensor:
    """FlashAttention's ``flash_attn_func`` by SDPA: ``(batch, Q, heads, head_dim)`` queries over
    ``(batch, K, kv_heads, head_dim)`` keys, causal aligned to the bottom right (query ``i`` sees keys ``<= i + K - Q``)."""
    query_length, key_length = query.shape[1], key.shape[1]
    FLASH_QUERY_LENGTHS.append(query_length)
    allowed = None
    if causal:
        allowed = torch.arange(key_length)[None, :] <= torch.arange(query_length)[:, None] + key_length - query_length
    output = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=allowed, scale=softmax_scale,
        enable_gqa=True,
    )
    return output.transpose(1, 2)


def reference_varlen(
    query, key, value, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int, max_seqlen_k: int, causal: bool = True,
    softmax_scale: float | None = None, **_,
) -> torch.Tensor:
    """``flash_attn_varlen_func`` by :func:`reference_flash` per sequence: ``(N, heads, head_dim)`` packed tokens."""
    VARLEN_CALLS.append((query.shape[0], int(cu_seqlens_q.numel() - 1), max_seqlen_q))
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    assert max(b - a for a, b in zip(starts_q, starts_q[1:])) <= max_seqlen_q
    pieces = [
        reference_flash(query[None, q0:q1], key[None, k0:k1], value[None, k0:k1], causal, softmax_scale)[0]
        for q0, q1, k0, k1 in zip(starts_q, starts_q[1:], starts_k, starts_k[1:])
    ]
    return torch.cat(pieces)


VARLEN_CALLS: list[tuple[int, int, int]] = []
"""``(tokens, sequences, max_seqlen_q)`` of every varlen call, recorded while a test runs."""

FLASH_QUERY_LENGTHS: list[int] = []
"""The query length of every reference FlashAttention call (varlen calls: per sequence), recorded while a test runs."""


@pytest.fixture
def reference_flash_kernels(monkeypatch):
    """HF's ``flash_attention_2`` resolves to the reference kernels for the test."""
    monkeypatch.setattr(
        flash_utils, "_lazy_imports",
        lambda *args, **kwargs: (reference_flash, reference_varlen, None, flash_utils._pad_input, flash_utils._unpad_input),
    )
    monkeypatch.setattr(flash_utils, "_loaded_implementation", None)
    VARLEN_CALLS.clear()
    FLASH_QUERY_LENGTHS.clear()
    yield VARLEN_CALLS
    monkeypatch.setattr(flash_utils, "_loaded_implementation", None)


def flash_text_model() -> torch.nn.Module:
    model = text_model("qwen2")
    model.config._attn_implementation = "flash_attention_2"
    return model


@pytest.mark.parametrize("method,ratio", [("dash", 0.0), ("dash", 0.5), ("random", 0.5)])
def test_packed_flash_prefill_matches_padded_flash_engine(method, ratio, reference_flash_kernels, packed_calls):  # noqa: F811 (the fixture)
    """Same kept set, logits and 16 decode steps as the padded engine under the same kernel; the packed
    layers went through the varlen function over the valid tokens, and never through FlexAttention."""
    model, prompts = flash_text_model(), ragged_prompts(TEXT_LENGTHS)
    assert_packed_matches_padded(
        model, prompts, packed_calls, expect_flex_calls=False, method=method, ratio=ratio, start_layer=2
    )
    packed_prefill = [call for call in reference_flash_kernels if call[1] == len(TEXT_LENGTHS) and call[0] > len(TEXT_LENGTHS)]
    assert packed_prefill, "the packed prefill made no varlen call"
    assert packed_prefill[0][0] == sum(TEXT_LENGTHS)
    assert packed_prefill[0][2] == max(TEXT_LENGTHS)


def test_packed_flash_prefill_matches_the_sdpa_engine(reference_flash_kernels):
    """The varlen path attends as SDPA does: packed under the reference kernel equals padded under SDPA."""
    prompts = ragged_prompts(TEXT_LENGTHS)
    valid = prompts["attention_mask"].bool()
    results = []
    for model, packing in ((text_model("qwen2"), "off"), (flash_text_model(), "ragged")):
        with Halting(model, packing=packing, ratio=0.5, start_layer=2) as halting, torch.no_grad():
            results.append((model(**prompts).logits[valid], halting.last_report.kept_positions))
    (expected, expected_kept), (got, got_kept) = results
    assert got_kept == expected_kept
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packing", ["off", "ragged"])
def test_flash_model_decodes_through_sdpa(packing, reference_flash_kernels):
    """The engine's decode steps of a FlashAttention model make no FlashAttention call (its prefill
    does), and give the same tokens and step logits as decoding through the model's flash path
    (``decode_backends = None``), after a padded or a packed prefill of a ragged batch."""
    model, prompts = flash_text_model(), ragged_prompts(TEXT_LENGTHS)
    produced, one_token_calls = {}, {}
    for backends in (DECODE_SDPA_BACKENDS, None):
        with Halting(model, packing=packing, ratio=0.5, start_layer=2) as halting:
            halting.engine.decode_backends = backends
            FLASH_QUERY_LENGTHS.clear()
            produced[backends] = generate(model, prompts)
            one_token_calls[backends] = FLASH_QUERY_LENGTHS.count(1)
        assert model.config._attn_implementation == "flash_attention_2"
    assert one_token_calls[DECODE_SDPA_BACKENDS] == 0
    assert one_token_calls[None] > 0, "decoding through the model's flash path made no one-token call"
    assert torch.equal(produced[DECODE_SDPA_BACKENDS].sequences, produced[None].sequences)
    for routed, flash in zip(produced[DECODE_SDPA_BACKENDS].logits, produced[None].logits, strict=True):
        torch.testing.assert_close(routed, flash, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("packing", ["off", "ragged"])
def test_flash_model_static_decoding_equals_its_eager_decoding(packing, reference_flash_kernels):
    """A FlashAttention model on the static path (``cache_implementation="static"``): after a padded or a
    packed flash prefill of a ragged batch, the static steps decode the same tokens and step logits as the
    engine's eager steps over the dynamic cache."""
    dynamic, static = halted_on_both_caches(
        flash_text_model(), ragged_prompts(TEXT_LENGTHS), method="dash", ratio=0.5, scope="all", packing=packing
    )
    assert VARLEN_CALLS or FLASH_QUERY_LENGTHS, "the prefill made no flash call"
    assert_same_decoding(dynamic, static)

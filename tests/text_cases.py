"""Text-only prompts and the two checks every text family passes: ratio 0 is the unmodified model,
ratio > 0 is the slow masking reference (prefill and ``STEPS`` decode steps)."""

from __future__ import annotations

import torch
from torch import nn

from dash_vl import Halting
from tests.reference import (
    STEPS,
    MaskingReference,
    assert_engine_matches_reference,
    capture_language_model_inputs,
    generate,
)

PROMPT_LENGTH = 40
LEFT_PADDING = 11


def text_prompts(batch: int, vocab_size: int = 97) -> dict:
    """``batch`` random prompts of ``PROMPT_LENGTH`` tokens (ids from 3: 0-2 are pad, eos, bos); every
    sample after the first has ``LEFT_PADDING`` pad tokens on the left."""
    generator = torch.Generator().manual_seed(batch)
    input_ids = torch.randint(3, vocab_size, (batch, PROMPT_LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, :LEFT_PADDING] = 0
    input_ids[attention_mask == 0] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask)


def assert_ratio_zero_matches_unmodified(model: nn.Module, prompts: dict) -> None:
    """Prefill logits on valid tokens and greedy ``generate`` identical to the model without the engine."""
    positions = capture_language_model_inputs(model, prompts).position_ids
    with torch.no_grad():
        expected_logits = model(**prompts, position_ids=positions).logits
    expected = generate(model, prompts)
    with Halting(model, ratio=0.0):
        with torch.no_grad():
            logits = model(**prompts, position_ids=positions).logits
        produced = generate(model, prompts)
    valid = prompts["attention_mask"].bool()
    assert torch.equal(logits[valid], expected_logits[valid])
    assert torch.equal(produced.sequences, expected.sequences)


def assert_matches_reference(model: nn.Module, prompts: dict, reference: MaskingReference, **knobs) -> None:
    """The engine under ``knobs`` keeps the reference's tokens and gives its logits, prefill and decode."""
    lm_inputs = capture_language_model_inputs(model, prompts)
    with torch.no_grad():
        expected_logits = model.lm_head(reference.prefill(lm_inputs))
    expected_tokens, expected_step_logits = reference.greedy(expected_logits[:, -1], STEPS)
    with Halting(model, **knobs) as halting:
        with torch.no_grad():
            logits = model(**prompts, position_ids=lm_inputs.position_ids).logits
        report = halting.last_report
        produced = generate(model, prompts)
    assert_engine_matches_reference(
        report, reference, lm_inputs.valid, logits, expected_logits, produced, expected_tokens, expected_step_logits,
        STEPS,
    )


def all_but_last(prompts: dict) -> torch.Tensor:
    """``(batch, T)`` bool: the valid tokens but the last, which DASH's default scope may halt."""
    eligible = prompts["attention_mask"].bool().clone()
    eligible[:, -1] = False
    return eligible

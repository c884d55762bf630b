"""CDPruner (Zhang et al., NeurIPS 2025, "Beyond Attention or Similarity: Maximizing Conditional
Diversity for Token Pruning in MLLMs"), its official rule with a model-agnostic relevance, before the LLM.

The official code (Theia-4869/CDPruner, ``llava/model/llava_arch.py``, commit 9541616,
``encode_images`` at lines 141-187) selects, per image, ``T`` of the ``N`` visual tokens:

1. similarity: the cosine between the projector outputs of every pair of visual tokens, in
   float32 (lines 148-153);
2. relevance to the instruction: the cosine between each visual token and each instruction
   embedding, *negated* and averaged over the instruction embeddings, then min-max scaled as
   ``(r - min r + 1e-6) / (max r - min r)`` (lines 156-160);
3. the conditional DPP kernel ``L = diag(r) S diag(r)`` (line 167);
4. greedy MAP inference (the fast Cholesky-style update, lines 170-181): ``T`` times, pick the
   token with the largest remaining ``d²`` (``argmax``: the first index on ties), take its row
   ``e = (L_j - c_j · C) / sqrt(d²_j)``, subtract ``e²`` from every ``d²`` and retire ``j``.

Here ``T = round(N (1 - ρ))`` (the official code takes ``T`` as a count, ``--visual_token_num``).
Past the kernel's rank (``T`` larger than the embedding width, or a gain that rounding leaves
at or below zero), where the official update divides by ``sqrt(0)`` or a negative and every gain
turns NaN, a pick adds a zero row instead, so the remaining picks follow the largest remaining
gain and exactly ``T`` distinct tokens are kept.
The adaptation: the official relevance reads CLIP's own embedding space, the patch features
through ``post_layernorm`` and ``visual_projection`` against CLIP's *text tower* run on the
question (``llava/model/multimodal_encoder/clip_encoder.py`` lines 79-95), which only a CLIP
vision tower has. Here both sides are the LLM's input embeddings: the visual tokens' projector
outputs against the embeddings of the prompt's text after its last visual token (the question
and the chat template's tail), with the official sign and scaling kept. The kernel's similarity
(step 1) is the official one on every family. Every visual token of a prompt (all its images and
video frames) forms one set (the official code: one image, or one anyres tile, at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dash_vl.methods.base import DecisionInputs, question_after_visual
from dash_vl.methods.pre_llm import PerPromptSelection


def instruction_relevance(visual: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
    """``(n,)`` float32 relevance in ``[0, 1]`` (scaled as above) of ``visual`` ``(n, D)`` to ``instruction`` ``(m, D)``."""
    visual, instruction = (rows.float() / rows.float().norm(dim=-1, keepdim=True) for rows in (visual, instruction))
    relevance = (-(visual @ instruction.T)).mean(dim=-1)
    return (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())


def conditional_dpp(features: torch.Tensor, relevance: torch.Tensor, count: int) -> torch.Tensor:
    """``(count,)`` long: greedy MAP picks of the DPP with kernel ``diag(r) S diag(r)``, in the order picked.

    ``features`` ``(n, D)`` give the cosine similarity ``S``; ``relevance`` ``(n,)`` float32. All ``n`` in order
    where ``count >= n``.
    """
    if count >= features.shape[0]:
        return torch.arange(features.shape[0], device=features.device)
    directions = features.float() / features.float().norm(dim=-1, keepdim=True)
    kernel = relevance[:, None] * (directions @ directions.T) * relevance[None, :]
    rows = torch.zeros(count, kernel.shape[0], device=kernel.device)
    gains = torch.diagonal(kernel).clone()
    picks = torch.empty(count, dtype=torch.long, device=kernel.device)
    for step in range(count):
        pick = gains.argmax()
        picks[step] = pick
        gain = gains[pick]
        residual = kernel[pick] - torch.einsum("t,tn->n", rows[:step, pick], rows[:step])
        row = torch.where(gain > 0, residual / gain.clamp(min=torch.finfo(gain.dtype).tiny).sqrt(), 0.0)
        rows[step] = row
        gains -= row.square()
        gains[pick] = -torch.inf
    return picks


@dataclass(frozen=True)
class CDPruner(PerPromptSelection):
    """Keep the visual tokens of each prompt that a DPP conditioned on the instruction picks."""

    def select(self, inputs: DecisionInputs, sample: int, positions: torch.Tensor, count: int) -> torch.Tensor:
        embeds = inputs.hidden_states[sample]
        question = question_after_visual(inputs.eligible[sample], inputs.valid[sample])
        relevance = instruction_relevance(embeds[positions], embeds[question])
        return conditional_dpp(embeds[positions], relevance, count)

"""PyramidDrop (Xing et al., CVPR 2025, "PyramidDrop: Accelerating Your Large Vision-Language Models
via Pyramid Visual Redundancy Reduction"), with the rule of its official code (Cooperx521/PyramidDrop,
commit 6444f30; lines below are of ``llava/model/modeling_llama_pdrop.py`` unless named).

At each decision layer ``l`` of the schedule (``start_layer`` then ``stage_layers``; official
``--layer_list '[8,16,24]'`` of LLaVA-1.5's 32 layers, ``scripts/v1_5/pdrop_eval/*.sh``, i.e. the
fractions 0.25, 0.5, 0.75 of the depth), before layer ``l`` runs (``rank_layer = layer_idx + 1``
after layer ``l - 1``, lines 1222-1231; prefill only, line 1224):

1. scores: layer ``l``'s own attention, its ``input_layernorm``, ``q_proj`` / ``k_proj`` and rotary
   over the states entering it (lines 1321-1342), from the **last instruction token** (position
   ``prompt_len + image_tokens - 1``, line 1390: the last prompt token at inference,
   ``llava/model/llava_arch.py`` lines 425-429) to every token, ``softmax(q k^T / sqrt(d) + causal
   mask)`` in float32 (lines 1395-1397), averaged over the heads (line 1399) and read on the image
   tokens still present (line 1400);
2. kept: the ``int(N λ^s)`` image tokens with the highest score at stage ``s = 1, 2, ...``, ``N``
   the image tokens of the prompt (``keep_length``, lines 1306-1307, with the ratio list
   ``[1.0, λ, λ², λ³]`` of ``llava/eval/model_vqa_loader.py`` lines 94-96; official λ = 0.5:
   ``--image_token_ratio_list "[0.5,0.25,0.125]"``), in prompt order (``topk`` then ``sort``,
   lines 1405-1407); every text token stays (line 1410).

Here ``λ = 1 - ρ`` (``ratio`` 0.5 is the official setting) and ``int`` is ``floor`` with a 1e-9
tolerance for the binary rounding of ``λ^s``. Of tied scores the earlier token is kept
(``topk`` leaves their order open). Deviations, each forced by the families served here: the
eligible tokens are every visual token of the prompt ranked together (the official code ranks
the one image block of a LLaVA-1.5 prompt); kept tokens keep their original rotary ids (M-RoPE
included) where the official code renumbers positions ``0..n-1`` after each drop (line 1446) and
shifts decode positions to match (lines 1261-1267); the scores stay float32 (the official code
casts the probabilities back to the model's dtype before the head mean, line 1397). The scoring
work (keys of layer ``l`` over the tokens still active, one query row) is in the FLOP count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dash_vl.methods.base import Decision, DecisionInputs, HaltingMethod, lowest


@dataclass(frozen=True)
class PyramidDrop(HaltingMethod):
    """Keep, at each stage, the visual tokens the last prompt token attends to most in the decision layer."""

    placement = "layer_input"
    default_scope = "visual"
    default_start_layer = 0.25
    supports_stages = True
    default_stage_layers = (0.5, 0.75)

    def scoring_queries(self) -> int:
        return 1

    @classmethod
    def stage_keep_counts(cls, ratio: float, stage: int, initial: list[int]) -> list[int]:
        """``floor(N λ^(stage + 1))`` eligible tokens kept per sample after decision ``stage`` (0-based):
        ``λ^(stage + 1)`` is :meth:`stage_retention` (``λ = 1 - ratio``), ``N`` each sample's eligible tokens
        at the first decision.

        Raises:
            ValueError: if a sample keeps none.
        """
        retention = cls.stage_retention(ratio, stage)
        counts = [math.floor(total * retention + 1e-9) for total in initial]
        for sample, (total, kept) in enumerate(zip(initial, counts)):
            if kept < 1:
                raise ValueError(
                    f"pyramiddrop keeps int({total} x {retention:.4g}) = 0 of the {total} visual tokens of "
                    f"sample {sample} after stage {stage + 1}; lower the ratio, use fewer stage_layers or give the "
                    "prompt more visual tokens"
                )
        return counts

    def keep(self, inputs: DecisionInputs, ratio: float) -> torch.Tensor:
        return self.decide(inputs, ratio).kept

    def decide(self, inputs: DecisionInputs, ratio: float) -> Decision:
        received = inputs.window_attention(1).mean(dim=1)[:, 0]
        counts = self.stage_keep_counts(ratio, inputs.stage, inputs.initial_eligible_counts)
        kept = lowest(-received, inputs.eligible, torch.tensor(counts, device=received.device))
        return Decision(kept=kept, kept_counts=counts)

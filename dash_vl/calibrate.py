"""Pick ``(start_layer, ratio)`` for a model from a few prompts with a cheap quality proxy.

Each calibration prompt is a context followed by a *continuation* whose tokens are scored
teacher-forced. The continuation is protected (``question="protected"``: never halted, scored
in the same pass), the context is halted, and every grid point ``(l_s, ρ)`` is compared with the
unmodified model on the continuation's next-token distributions. A multi-stage method keeps its
``stage_layers`` at every point; a point is its whole decision schedule (``l_s`` then the later
decision layers) and ρ. The proxies:

- perplexity increase: ``exp(mean NLL_halted - mean NLL_unmodified) - 1`` (the DASH paper's
  screen), pooled over all scored tokens of all prompts;
- KL: mean ``KL(p_unmodified || p_halted)`` per scored token, in nats.

The pick is the point of largest ideal speedup (:meth:`dash_vl.HaltingConfig.ideal_speedup`, one decision:
``L / (l_s + (L - l_s)(1 - ρ))``) whose proxies are within the user's :class:`QualityBudget` (ties: the
lower KL).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from dash_vl.calibrate_grid import DEFAULT_RATIOS, DEFAULT_START_LAYERS, QualityBudget, grid
from dash_vl.halting import Halting
from dash_vl.suites.retrieval import multifact_sample, passkey_sample

__all__ = [
    "DEFAULT_RATIOS", "DEFAULT_START_LAYERS", "CalibrationPoint", "CalibrationPrompt", "CalibrationResult", "QualityBudget",
    "calibrate", "compare", "retrieval_prompts",
]


@dataclass(frozen=True)
class CalibrationPrompt:
    """Token ids ``(T,)`` of context then continuation; the last ``continuation`` are scored.

    Raises:
        ValueError: if ``continuation`` is below 2 (one next-token prediction inside it at least)
            or leaves no context.
    """

    ids: tuple[int, ...]
    continuation: int

    def __post_init__(self) -> None:
        if not 2 <= self.continuation < len(self.ids):
            raise ValueError(
                f"continuation must be in [2, {len(self.ids)}) tokens for a {len(self.ids)}-token prompt, "
                f"got {self.continuation}"
            )

    @classmethod
    def from_text(cls, tokenizer: PreTrainedTokenizerBase, text: str, continuation: int) -> CalibrationPrompt:
        """``text`` tokenized; its last ``continuation`` tokens are scored."""
        return cls(tuple(tokenizer(text, add_special_tokens=False).input_ids), continuation)


@dataclass(frozen=True)
class CalibrationPoint:
    """One grid point and what it cost.

    Attributes:
        decision_layers: the layer index of every decision, ascending: ``l_s``, then the later decision
            layers of a multi-stage method (``(l_s,)`` for one decision).
        ratio: ρ.
        ideal_speedup: :meth:`dash_vl.HaltingConfig.ideal_speedup` over :attr:`decision_layers` (one decision:
            ``L / (l_s + (L - l_s)(1 - ρ))``).
        relative_flops: measured prefill FLOPs over the unmodified model's, mean over prompts.
        perplexity_increase: relative, pooled over scored tokens.
        kl: nats per scored token.
    """

    decision_layers: tuple[int, ...]
    ratio: float
    ideal_speedup: float
    relative_flops: float
    perplexity_increase: float
    kl: float

    @property
    def start_layer(self) -> int:
        """The first decision layer ``l_s``."""
        return self.decision_layers[0]

    def knobs(self) -> dict[str, int | float | tuple[int, ...]]:
        """The :class:`dash_vl.HaltingConfig` knobs that reproduce this point's schedule on the calibrated model:
        ``start_layer``, ``stage_layers`` (layer indices) and ``ratio``."""
        return {"start_layer": self.start_layer, "stage_layers": self.decision_layers[1:], "ratio": self.ratio}


@dataclass(frozen=True)
class CalibrationResult:
    """Every grid point measured, the budget and the pick (``None``: no point within budget)."""

    method: str
    points: list[CalibrationPoint]
    budget: QualityBudget
    pick: CalibrationPoint | None

    def table(self) -> str:
        """Plain-text table, one line per point (its decision layers comma-separated), the pick marked ``<-``."""
        schedules = [",".join(map(str, point.decision_layers)) for point in self.points]
        width = max(map(len, ["layers", *schedules]))
        lines = [f"{'layers':>{width}} {'ρ':>5} {'ideal x':>8} {'rel.FLOPs':>9} {'ppl +%':>8} {'KL nats':>8}  ok"]
        for point, schedule in zip(self.points, schedules):
            mark = "<-" if point == self.pick else ""
            lines.append(
                f"{schedule:>{width}} {point.ratio:>5.2f} {point.ideal_speedup:>8.3f} {point.relative_flops:>9.3f} "
                f"{100 * point.perplexity_increase:>8.2f} {point.kl:>8.4f}  {'yes' if self.budget.allows(point) else 'no':<3} {mark}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """The pick as the knobs that reproduce it (:meth:`CalibrationPoint.knobs`) and what it costs."""
        if self.pick is None:
            return f"{self.method}: no grid point is within the budget; run unmodified (ratio 0)"
        pick = self.pick
        knobs = " ".join(f"{name}={value}" for name, value in pick.knobs().items())
        return (
            f"{self.method}: {knobs} (ideal speedup "
            f"{pick.ideal_speedup:.3f}x, perplexity {100 * pick.perplexity_increase:+.2f} %, KL {pick.kl:.4f} nats)"
        )


def retrieval_prompts(
    tokenizer: PreTrainedTokenizerBase, count: int = 4, length: int = 1024, seed: int = 1234
) -> list[CalibrationPrompt]:
    """Built-in prompts: pass-key and multi-fact contexts (:mod:`dash_vl.suites.retrieval`, a seed of
    their own) whose continuation is the question and its answer sentence."""
    rng = random.Random(seed)
    prompts = []
    for index in range(count):
        builder = passkey_sample if index % 2 == 0 else multifact_sample
        sample = builder(rng, tokenizer, length, rng.random())
        context = tokenizer(sample.context, add_special_tokens=False).input_ids
        ending = tokenizer(f"{sample.question} {sample.answer}.", add_special_tokens=False).input_ids
        prompts.append(CalibrationPrompt(tuple(context + ending), len(ending)))
    return prompts


def continuation_log_probs(
    model: nn.Module, prompt: CalibrationPrompt, halting: Halting | None
) -> tuple[torch.Tensor, float]:
    """Log-probabilities ``(continuation - 1, vocab)`` (float32) of the next token at each
    continuation position but the last, and the prefill's relative FLOPs (1.0 unmodified)."""
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt.ids], device=device)
    scored = slice(len(prompt.ids) - prompt.continuation, len(prompt.ids) - 1)
    with torch.no_grad():
        if halting is None:
            logits = model(input_ids=input_ids).logits
            relative_flops = 1.0
        else:
            with halting, halting.question_length(prompt.continuation):
                logits = model(input_ids=input_ids).logits
            relative_flops = halting.last_report.relative_flops
    return F.log_softmax(logits[0, scored].float(), dim=-1), relative_flops


def compare(reference: torch.Tensor, halted: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scored token ``(n,)``: NLL difference (halted minus reference) and KL(reference || halted),
    from log-probabilities ``(n, vocab)`` and next-token ids ``(n,)``."""
    gather = targets[:, None]
    nll_difference = reference.gather(1, gather)[:, 0] - halted.gather(1, gather)[:, 0]
    kl = (reference.exp() * (reference - halted)).sum(dim=-1)
    return nll_difference, kl


def calibrate(
    model: nn.Module,
    prompts: Sequence[CalibrationPrompt],
    budget: QualityBudget,
    method: str = "dash",
    start_layers: Sequence[int | float] = DEFAULT_START_LAYERS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    stage_layers: Sequence[int | float] | None = None,
    progress: bool = True,
) -> CalibrationResult:
    """Measure every ``(start_layer, ratio)`` on ``prompts`` and pick the fastest within ``budget``.

    ``start_layers`` are layer indices or fractions of the depth; ``stage_layers`` (``None``: the
    method's default) are a multi-stage method's later decision layers, the same at every point, after
    every start layer. Points whose whole decision schedule and ratio agree after rounding are measured
    once (see :func:`dash_vl.calibrate_grid.grid`).

    Raises:
        ValueError: on no prompts, on a method that halts only visual tokens, on a start layer not before
            the first of ``stage_layers``, or on knobs :class:`dash_vl.HaltingConfig` rejects.
    """
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    num_layers = model.config.get_text_config().num_hidden_layers
    configs = grid(method, start_layers, ratios, stage_layers, num_layers)
    references = [continuation_log_probs(model, prompt, None)[0] for prompt in prompts]
    targets = [torch.tensor(prompt.ids[len(prompt.ids) - prompt.continuation + 1:], device=r.device) for prompt, r in zip(prompts, references)]
    points = []
    for (schedule, ratio), config in tqdm(sorted(configs.items()), desc=f"calibrating {method}", disable=not progress):
        halting = Halting(model, config)
        differences, divergences, flops = [], [], []
        for prompt, reference, target in zip(prompts, references, targets):
            halted, relative_flops = continuation_log_probs(model, prompt, halting)
            difference, kl = compare(reference, halted, target)
            differences.append(difference)
            divergences.append(kl)
            flops.append(relative_flops)
        points.append(
            CalibrationPoint(
                decision_layers=schedule, ratio=ratio, ideal_speedup=config.ideal_speedup(num_layers),
                relative_flops=sum(flops) / len(flops),
                perplexity_increase=float(torch.cat(differences).mean().exp()) - 1.0,
                kl=float(torch.cat(divergences).mean()),
            )
        )
    allowed = [point for point in points if budget.allows(point)]
    pick = max(allowed, key=lambda point: (point.ideal_speedup, -point.kl), default=None)
    return CalibrationResult(method, points, budget, pick)

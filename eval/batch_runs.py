"""The batch benchmarks' shared pieces (``bench_generate``, ``bench_packed``, ``bench_flash4``, ``bench_image_batch``):
the halting of a setting, random prompts of a ragged batch, the attention kernel a run uses, and the checks that
compare two runs (relative error of the states, agreement of the kept positions). Benchmarks import these from
here (and timing from ``gpu_timing``), never from one another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch

from dash_vl import Halting, hf_compat
from dash_vl.methods import METHODS
from dash_vl.methods.pre_llm import BeforeLanguageModel
from dash_vl.testing import full_size_config, random_model, tiny_config, tiny_processor
from gpu_timing import cuda_elapsed_ms, cuda_medians_ms, host_elapsed_ms


def halting_for(model, method: str, ratio: float, decode: str = "engine", **knobs) -> Halting | None:
    """The setting's halting (scope ``all``: the text prompt has no visual tokens; ``visual`` for a method
    that picks visual tokens before the LLM, which runs on ``--image`` prompts; further ``knobs`` of
    :class:`dash_vl.HaltingConfig`; ``decode="model"`` decodes through the model's own kernel, ``"engine"``
    through the engine's decode kernels), or ``None`` unmodified."""
    if method == "none":
        return None
    scope = "visual" if issubclass(METHODS[method], BeforeLanguageModel) else "all"
    halting = Halting(model, method=method, ratio=ratio, scope=scope, **knobs)
    if decode == "model":
        halting.engine.decode_backends = None
    return halting


def left_padding_mask(lengths: list[int], device: torch.device) -> torch.Tensor:
    """``(batch, max(lengths))`` long: 1 on the last ``lengths[b]`` slots of row ``b``, 0 on its left padding."""
    width = max(lengths)
    return (torch.arange(width, device=device) >= width - torch.tensor(lengths, device=device)[:, None]).long()


SMOKE_LENGTHS = (48, 36, 24, 12)


class Prompts:
    """Random input states of prompts of ``lengths`` tokens, as one left-padded batch and one by one.

    Attributes:
        embeds: ``(batch, T_max, D)``, zeros on the left padding.
        attention_mask: ``(batch, T_max)`` long.
        position_ids: ``(3, batch, T_max)`` M-RoPE ids of text, counted from each prompt's first token.
    """

    def __init__(self, lengths: list[int], hidden_size: int, device: torch.device, dtype: torch.dtype) -> None:
        width = max(lengths)
        generator = torch.Generator(device=device).manual_seed(0)
        self.attention_mask = left_padding_mask(lengths, device)
        embeds = torch.randn(len(lengths), width, hidden_size, device=device, dtype=dtype, generator=generator)
        self.embeds = embeds * self.attention_mask[..., None]
        self.position_ids = (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)[None].expand(3, -1, -1)
        self.lengths = lengths

    def batch(self) -> dict[str, torch.Tensor]:
        return dict(inputs_embeds=self.embeds, attention_mask=self.attention_mask, position_ids=self.position_ids)

    def alone(self, sample: int) -> dict[str, torch.Tensor]:
        """Prompt ``sample`` as a batch of one, without padding."""
        length = self.lengths[sample]
        return dict(
            inputs_embeds=self.embeds[sample : sample + 1, -length:],
            position_ids=self.position_ids[:, sample : sample + 1, -length:],
        )


def relative_error(candidate: list, reference: list) -> float:
    got, expected = torch.cat(candidate).float(), torch.cat(reference).float()
    return float((got - expected).norm() / expected.norm())


def peak_gib(run: Callable[[], object], device: torch.device) -> float:
    """Peak memory of one run, GiB (``nan`` off the GPU)."""
    if device.type != "cuda":
        run()
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run()
    return torch.cuda.max_memory_allocated() / 2**30


def measure_modes(runs: dict[str, Callable[[], list]], args, device: torch.device) -> dict[str, float]:
    """Median ms and peak GiB of every mode, the modes taking turns."""
    clock = cuda_elapsed_ms if device.type == "cuda" else host_elapsed_ms
    times = cuda_medians_ms(runs, args.warmup, args.repeats, elapsed_ms=clock)
    row = {f"{mode}_ms": milliseconds for mode, milliseconds in times.items()}
    row.update({f"{mode}_gib": peak_gib(run, device) for mode, run in runs.items()})
    return row


def guarded_row(
    label: str, measure: Callable[[], dict], device: torch.device, errors: tuple[type[Exception], ...] = (RuntimeError,)
) -> dict:
    """The row of setting ``label``; a setting that fails with one of ``errors`` (by default RuntimeError:
    out of memory, a compile error) leaves its error in the row and the benchmark goes on with the next one."""
    try:
        row = dict(setting=label, **measure())
    except errors as error:
        row = dict(setting=label, error=f"{type(error).__name__}: {error}"[:300])
    if device.type == "cuda":
        torch.cuda.empty_cache()
    print(json.dumps(row), flush=True)
    return row


def qwen2_vl_model(smoke: bool) -> tuple[torch.nn.Module, torch.device, torch.dtype]:
    """Qwen2-VL with random weights: Qwen2-VL-7B shapes in bf16 on the GPU, or a tiny float32 one on the CPU (``smoke``)."""
    if smoke:
        device, dtype = torch.device("cpu"), torch.float32
        config = tiny_config("qwen2_vl", tiny_processor("qwen2_vl").tokenizer)
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
        config = full_size_config("qwen2_vl")
    return random_model(config, dtype=dtype, device=device), device, dtype


KERNEL_IMPLEMENTATIONS = {"sdpa": "sdpa", "flex": "sdpa", "fa4": "flash_attention_4", "fa4_packed": "flash_attention_4"}
"""The HF attention implementation each kernel label runs under (Flex is the engine's packed path over SDPA's name)."""


PACKED_KERNELS = ("flex", "fa4_packed")
"""Kernels of the engine's packed path (``packing="always"``): the unmodified model has none."""


UNPACKED = {"flex": "sdpa", "fa4_packed": "fa4"}
"""The padded kernel of each packed one: what a packed run is compared with."""


KERNEL_ERRORS = (Exception,)
"""What a row survives: a kernel package that does not import or a JIT compile that fails, whatever its error type."""


@contextmanager
def kernel(model, label: str, towers: str = "lm") -> Iterator[None]:
    """Within the block, the language tower (``towers="lm"``) or both towers (``"both"``) attend with ``label``'s kernel."""
    configs = [model.model.language_model.config] + ([model.model.visual.config] if towers == "both" else [])
    with ExitStack() as stack:
        for config in configs:
            stack.enter_context(hf_compat.attention_implementation(config, KERNEL_IMPLEMENTATIONS[label]))
        yield


def kept_of(run) -> list[set[int]] | None:
    """The kept positions of ``run``'s last call (:func:`prompt_positions`), ``None`` unmodified."""
    return None if run.halting is None else prompt_positions(run.halting.reports, run.calls)


def prompt_positions(reports: list, calls: list[dict]) -> list[set[int]]:
    """Every sample's kept positions, counted from its first prompt token (the reports count them in
    the left-padded layout of their call), samples of all calls in order."""
    kept = []
    for report, call in zip(reports, calls, strict=True):
        width = (call["inputs_embeds"] if "inputs_embeds" in call else call["input_ids"]).shape[1]
        for tokens, positions in zip(report.prompt_tokens, report.kept_positions, strict=True):
            kept.append({position - (width - tokens) for position in positions})
    return kept


def kept_agreement(candidate: list[set[int]] | None, reference: list[set[int]] | None) -> float:
    """Share of the reference's kept positions the candidate also kept, over all samples (1.0 where neither halts)."""
    if candidate is None or reference is None:
        return 1.0
    shared = sum(len(got & expected) for got, expected in zip(candidate, reference, strict=True))
    return shared / max(sum(len(expected) for expected in reference), 1)


def version_of(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None

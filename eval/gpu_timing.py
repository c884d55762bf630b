"""Shared pieces of the GPU benchmarks: CUDA-event medians (host-clock ones for CPU smoke runs), the ideal
halted prefill and DASH's floor, the ideal halted vision encoder, a fixed decision input."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from importlib import metadata

import torch
import transformers

from dash_vl.adapters.encoder_base import EncoderAdapter
from dash_vl.engine.decision_inputs import KeyValueCapture
from dash_vl.engine.vision_encoder import recut_segments
from dash_vl.hf_compat import cache_argument, new_cache, output_cache


def cuda_elapsed_ms(run: Callable[[], object]) -> float:
    """Milliseconds ``run`` takes on the current CUDA stream, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def host_elapsed_ms(run: Callable[[], object]) -> float:
    """Milliseconds ``run`` takes on the host clock (for a CPU smoke run of a benchmark, not for its numbers)."""
    start = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - start)


def cuda_medians_ms(
    runs: dict[str, Callable[[], object]], warmup: int, repeats: int,
    elapsed_ms: Callable[[Callable[[], object]], float] = cuda_elapsed_ms,
) -> dict[str, float]:
    """Median wall time of each of ``runs`` on the current CUDA stream, in milliseconds (CUDA events,
    after warm-up; ``elapsed_ms`` is the clock). The runs take turns within every repeat, so drift in
    clocks or temperature during the measurement reaches all of them alike, and every other repeat
    takes them in reverse order, so that no run always follows the same one."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs.items())
    for repeat in range(repeats):
        for name, run in order if repeat % 2 == 0 else reversed(order):
            times[name].append(elapsed_ms(run))
    return {name: statistics.median(measured) for name, measured in times.items()}


def cuda_median_ms(run: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median wall time of ``run`` on the current CUDA stream, in milliseconds (CUDA events, after warm-up)."""
    return cuda_medians_ms({"run": run}, warmup, repeats)["run"]


def cache_bytes(cache) -> int:
    """Bytes held by a DynamicCache, all layers: keys and values, and a linear-attention layer's
    convolution and recurrent states (Qwen3.5's gated delta nets)."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            total += tensor.nbytes if isinstance(tensor, torch.Tensor) else 0
        for name in ("conv_states", "recurrent_states"):
            total += sum(state.nbytes for state in getattr(layer, name, {}).values() if state is not None)
    return total


def measure(run, warmup: int, repeats: int, elapsed_ms: Callable[[Callable[[], object]], float] = cuda_elapsed_ms) -> dict:
    """Median prefill ms (``elapsed_ms`` is the clock), then one more run for peak GPU memory (GiB; 0 on
    the CPU) and KV-cache bytes (MiB)."""
    milliseconds = cuda_medians_ms({"run": run}, warmup, repeats, elapsed_ms)["run"]
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    output = run()
    return dict(
        ms=milliseconds,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0,
        kv_mib=cache_bytes(output_cache(output)) / 2**20,
    )


def _full_length_layers(language_model, embeds: torch.Tensor, rope_ids: torch.Tensor, start: int):
    """Layers ``< start`` on all ``T`` tokens, SDPA causal; returns the states ``(1, T, D)``, the
    rotary tables and the cache."""
    cache = new_cache(language_model.config)
    hidden = embeds
    rope = language_model.rotary_emb(hidden, rope_ids)
    for layer in language_model.layers[:start]:
        hidden = layer(hidden, attention_mask=None, position_embeddings=rope, **cache_argument(cache))
    return hidden, rope, cache


def ideal_prefill(language_model, embeds: torch.Tensor, rope_ids: torch.Tensor, start: int, keep_index: torch.Tensor):
    """Layers ``< start`` on all tokens, layers ``>= start`` on ``keep_index`` (``(1, K)``), SDPA causal,
    HF layers called directly: no scoring, no bookkeeping."""
    hidden, _, cache = _full_length_layers(language_model, embeds, rope_ids, start)
    hidden = hidden[:, keep_index[0]]
    rope = language_model.rotary_emb(hidden, rope_ids[..., keep_index[0]])
    for layer in language_model.layers[start:]:
        hidden = layer(hidden, attention_mask=None, position_embeddings=rope, **cache_argument(cache))
    return language_model.norm(hidden)


def floor_prefill(language_model, embeds: torch.Tensor, rope_ids: torch.Tensor, start: int, keep_index: torch.Tensor):
    """The ideal plus the two things DASH cannot skip, HF modules called directly, selection given:

    * layer ``start``'s attention sub-layer over all ``T`` tokens (Δattn needs every token's
      update), its kept tokens' keys and values cached, then its MLP on the kept tokens only;
    * the final norm over all ``T`` tokens, the kept ones' states written into the others'
      frozen ones (an HF language model returns every prompt token's state).

    No scoring, no bookkeeping: the lowest time a DASH engine can reach at this selection.
    Returns the final states ``(1, T, D)``.
    """
    hidden, rope, cache = _full_length_layers(language_model, embeds, rope_ids, start)
    decision_layer, kept = language_model.layers[start], keep_index[0]
    capture = KeyValueCapture()
    update, _ = decision_layer.self_attn(
        hidden_states=decision_layer.input_layernorm(hidden), position_embeddings=rope, attention_mask=None,
        **cache_argument(capture),
    )
    cache.update(capture.key[:, :, kept], capture.value[:, :, kept], start)
    compact = hidden[:, kept] + update[:, kept]
    compact = compact + decision_layer.mlp(decision_layer.post_attention_layernorm(compact))
    rope = language_model.rotary_emb(compact, rope_ids[..., kept])
    for layer in language_model.layers[start + 1 :]:
        compact = layer(compact, attention_mask=None, position_embeddings=rope, **cache_argument(cache))
    hidden[:, kept] = compact
    return language_model.norm(hidden)


def ideal_encoder(adapter: EncoderAdapter, args: tuple, kwargs: dict, start: int, active: torch.Tensor) -> object:
    """A vision tower, called with ``args`` / ``kwargs`` (as the model calls it), with blocks ``< start`` on all
    ``P`` patches and blocks ``>= start`` on the patches ``active`` (``(K,)`` sorted positions in the blocks'
    order), given: no scoring, no bookkeeping; the frozen patches' states written back and merged as the
    tower does. Returns the tower's output.

    Where the output carries every block's states (``adapter.wants_layer_states``: SigLIP, InternViT), those
    entering blocks ``<= start`` are the real ones and every later one is the final states, written back once:
    the last block's states (``hidden_states[-1]``, ``last_hidden_state``, what LLaVA-OneVision and InternVL
    read at ``vision_feature_layer = -1``) are exact, and no per-block copies are assembled."""
    layout = adapter.layout(args, kwargs)
    hidden, rotary, blocks = layout.hidden_states, layout.position_embeddings, adapter.blocks
    states = [hidden]
    for index in range(start):
        hidden = adapter.run_block(blocks[index], hidden, layout.segments[index], rotary)
        states.append(hidden)
    compact, compact_rotary = hidden[active], tuple(part[active] for part in rotary)
    recut = {id(segments): recut_segments(segments, active) for segments in layout.segments}
    for index in range(start, len(blocks)):
        compact = adapter.run_block(blocks[index], compact, recut[id(layout.segments[index])], compact_rotary)
    final = hidden.index_copy(0, active, compact)
    layer_states = (*states, *(final,) * (len(blocks) - start)) if adapter.wants_layer_states else None
    return adapter.output(final, layout, layer_states)


@dataclass
class FixedDecisionInputs:
    """Decision inputs with a given attention update ``(batch, T, hidden)``, to time scoring + selection alone."""

    hidden_states: torch.Tensor
    valid: torch.Tensor
    eligible: torch.Tensor
    update: torch.Tensor

    def attention_update(self) -> torch.Tensor:
        return self.update


def driver_version() -> str | None:
    """The NVIDIA driver's version as ``nvidia-smi`` reports it; ``None`` where there is none."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip().splitlines()[0] if found.stdout.strip() else None


OPTIONAL_KERNEL_PACKAGES = ("flash-attn", "flash-attn-4", "flash-linear-attention", "causal-conv1d")
"""Distributions whose presence changes which kernels transformers picks (FlashAttention for attention; for
gated-delta-net layers, flash-linear-attention's chunked rule and causal-conv1d's convolution instead of
transformers' PyTorch fallbacks)."""


def optional_kernel_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`OPTIONAL_KERNEL_PACKAGES` (``None``: not installed)."""
    versions: dict[str, str | None] = {}
    for name in OPTIONAL_KERNEL_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_metadata(**settings: object) -> dict:
    """What a results file states beside its rows: GPU, driver, versions (the optional kernel packages
    included), date and the run's ``settings``."""
    return dict(
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)", driver=driver_version(),
        torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
        kernel_packages=optional_kernel_versions(), date=str(date.today()), **settings,
    )


def write_rows(rows: list[dict], out: str, **settings: object) -> None:
    """Write ``rows`` with :func:`run_metadata` to the JSON file ``out`` (again after each part of a run, so a
    run cut short keeps what it finished)."""
    with open(out, "w") as handle:
        json.dump(dict(meta=run_metadata(**settings), rows=rows), handle, indent=1)


def report_run(rows: list[dict], out: str | None, **settings: object) -> None:
    """Print the run's metadata (:func:`run_metadata`) as JSON, and write it with ``rows`` to ``out`` when given."""
    print(json.dumps(run_metadata(**settings)))
    if out:
        write_rows(rows, out, **settings)


def add_timing_arguments(parser: argparse.ArgumentParser, warmup: int = 2, repeats: int = 5) -> None:
    """``--warmup``, ``--repeats`` and ``--out`` (JSON of the rows), shared by the benchmarks."""
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")


class _Missing:
    """A missing field: prints as ``-`` under any format spec."""

    def __format__(self, spec: str) -> str:
        return "-"


class _Dash(dict):
    """A row for ``str.format_map`` where a missing field prints as ``-``."""

    def __missing__(self, key: str) -> _Missing:
        return _Missing()


def print_table(rows: list[dict], columns: dict[str, str]) -> None:
    """A markdown table: ``columns`` maps each header to a format string over a row's fields."""
    print("\n| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for row in rows:
        print("| " + " | ".join(spec.format_map(_Dash(row)) for spec in columns.values()) + " |")

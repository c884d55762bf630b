"""Whole answers, side by side with the unmodified model: time to first token, per-token decode and end to end.

Qwen2-VL-7B shapes, random bf16 weights (speed does not depend on weight values), SDPA, on a GPU.
The prompt is ``--batch`` random text prompts of ``T`` tokens each (the language tower's work;
the ViT does not run), or with ``--image`` one prompt of one image of about ``T`` visual tokens
(the whole model, its ViT included), or with ``--mixed`` one left-padded batch of random text
prompts of those lengths (halted settings then pack it: ``--packing``). For every ``T``, under every
``--kernels`` attention implementation of the language tower (``sdpa``, ``flash_attention_4``, ...),
the unmodified model and every method at every ratio run ``model.generate`` greedily with
``min_new_tokens = max_new_tokens = N``:

* a logits processor records a CUDA event as each new token's logits are ready, so one call gives
  the time to the first token (TTFT: prefill and the first token), every decode step, and the
  end-to-end time to any answer length ``n <= N``;
* each setting's calls take turns with the others within every repeat (order reversed every
  other repeat); TTFT is the median over repeats, the per-token time the median of all decode
  steps of all repeats, end to end the median over repeats of the time to token ``n``;
* the crossover is the answer length past which a method's end-to-end time exceeds the
  unmodified model's (``never`` when its decode steps are not slower);
* ``dash`` at ρ = 0 is the engine halting nothing: the unmodified model's work, with the engine's
  decode kernels (``dash_vl.engine.decode_kernels``), so the table shows what kernel choice alone buys;
* a halted setting decodes through the engine's SDPA decode kernels under every kernel (a
  FlashAttention model too, ``dash_vl.engine.decode_kernels``); ``--model-decode`` adds, under a
  FlashAttention kernel, every halted setting decoding through that kernel (``decode = model``);
* every ratio (×) is the unmodified model's time under the same kernel over the setting's; the
  ``vs first`` column compares with the unmodified model under the first kernel;
* ``--compiled`` times HF's own fast path beside the engine's: the unmodified model with the dynamic
  cache (``hf_default``) and with ``cache_implementation="static"`` (``hf_static``, which ``generate``
  compiles with CUDA graphs), and every method at every ratio eager (the dynamic cache, the engine's
  eager decode steps: ``<method>_<ratio>_eager``) and compiled (the static cache, the engine's
  CUDA-graph decode steps: ``<method>_<ratio>_compiled``). Its ratios are against the faster of
  ``hf_default`` and ``hf_static`` for each metric, and it checks every compiled setting against its
  eager one: the greedy tokens (``decode_agrees``, ``first_differing_step``) and the compiled logits
  teacher-forced on the eager tokens (``max_logit_diff``, over ``--check-tokens`` steps); ``hf_static``
  is checked against ``hf_default`` the same way, the control that shows how far bf16 rounding alone
  moves HF's own compiled decoding on the same prompt;
* every setting keeps one ``Halting`` for all its calls, as a user's ``dash_vl.load`` model or ``with halting:``
  block does, so a compiled setting records its CUDA graph in its first call of a prompt shape and replays
  it in every later one (:mod:`dash_vl.engine.static_decoder`), as HF static compiles once per shape;
* ``--eager-new-tokens`` gives the dynamic-cache settings (``hf_default``, ``_eager``) shorter answers than
  the static-cache ones (their decode steps are 3-4× slower, so they cost most of a run): their rows then
  report end to end up to that length only, and longer answers compare with ``hf_static`` alone;
* with ``--out`` the JSON is rewritten after each prompt's checks (under ``meta.checks``) and after every
  repeat, so a run cut short keeps what it finished.

    python eval/bench_generate.py --lengths 4096 16384 32768 --batch 1 --out eval/results/raw/generate_qwen2vl7b_b1.json
    python eval/bench_generate.py --profile 32768 --methods dash --ratios 0.9   # where a decode step's time goes
    python eval/bench_generate.py --kernels sdpa flash_attention_4 --lengths 16384 --ratios 0.9 \
        --mixed 16384 12288 8192 4096 --model-decode --out eval/results/raw/generate_flash4_decode_qwen2vl7b.json
    python eval/bench_generate.py --compiled --methods dash fastv --ratios 0.9 --lengths 4096 16384 32768 \
        --mixed 16384 12288 8192 4096 --new-tokens 512 --eager-new-tokens 128 --repeats 2 \
        --out eval/results/raw/generate_compiled_n512_qwen2vl7b.json
    python eval/bench_generate.py --compiled --image --lengths 16384 --ratios 0.9 \
        --methods dash fastv visionzip vispruner divprune cdpruner --new-tokens 512 --eager-new-tokens 128 \
        --out eval/results/raw/generate_compiled_image_qwen2vl7b.json
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import transformers
from torch.profiler import ProfilerActivity, profile

from batch_runs import halting_for, left_padding_mask
from dash_vl import Halting, hf_compat
from dash_vl.engine.masks import is_flash
from dash_vl.methods import METHODS
from dash_vl.methods.pre_llm import BeforeLanguageModel
from dash_vl.testing import full_size_config, long_prompt, random_model
from gpu_timing import add_timing_arguments, print_table, report_run, write_rows

ANSWER_LENGTHS = (1, 16, 128, 512)


class TokenClock(transformers.LogitsProcessor):
    """Records a CUDA event each time ``generate`` hands it a new token's scores."""

    def __init__(self) -> None:
        self.events: list[torch.cuda.Event] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events.append(event)
        return scores


class TeacherForcing(transformers.LogitsProcessor):
    """Makes greedy ``generate`` emit ``tokens`` ``(batch, N)`` after a prompt of ``prompt_length`` slots."""

    def __init__(self, tokens: torch.Tensor, prompt_length: int) -> None:
        self.tokens, self.prompt_length = tokens, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_length
        return torch.full_like(scores, -torch.inf).scatter_(1, self.tokens[:, step : step + 1], 0.0)


def generate_options(cache: str, new_tokens: int, cache_length: int | None = None) -> dict:
    """``generate``'s greedy arguments for ``new_tokens`` tokens over the ``cache`` of a :data:`Setting`; a
    static cache of ``cache_length`` slots (warm-up, timing and checks of one prompt share one length, so
    HF compiles once per prompt)."""
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if cache != "static":
        return options
    return dict(options, cache_implementation="static", max_cache_len=cache_length)


def static_generate(model, cache: str, **options) -> Any:
    """``model.generate(**options)``; on a static ``cache`` sized for this call alone (HF keeps the longest
    length of any earlier call, whose masked slots every decode step would read)."""
    if cache == "static":
        hf_compat.size_static_cache_per_call(model)
    return model.generate(**options)


def timed_generate(model, inputs: dict, new_tokens: int, cache: str = "dynamic", cache_length: int | None = None) -> list[float]:
    """Milliseconds from the call to each new token's logits, ``(new_tokens,)`` (``cache_length``: a static cache's slots)."""
    clock = TokenClock()
    start = torch.cuda.Event(enable_timing=True)
    start.record()
    static_generate(
        model, cache, **inputs, **generate_options(cache, new_tokens, cache_length),
        logits_processor=transformers.LogitsProcessorList([clock]),
    )
    torch.cuda.synchronize()
    return [start.elapsed_time(event) for event in clock.events]


Setting = tuple[str, str, float, str, str]
"""``(attention implementation, method, ratio, decode, cache)``; method ``"none"`` is the unmodified model;
decode ``"engine"``: the engine's decode kernels (SDPA, :mod:`dash_vl.engine.decode_kernels`), ``"model"``:
the model's own implementation and PyTorch's choice (``decode_backends = None``); cache ``"dynamic"``:
``generate``'s default, ``"static"``: ``cache_implementation="static"`` (HF compiles the unmodified
model's decode steps; under halting the engine replays its CUDA graphs, :mod:`dash_vl.engine.decode_graph`)."""


def settings_of(
    methods: list[str], ratios: list[float], kernels: list[str], model_decode: bool = False, compiled: bool = False
) -> list[Setting]:
    """Per kernel: the unmodified model, the engine halting nothing (its decode kernels alone), then every
    method at every ratio; with ``model_decode``, under a FlashAttention kernel every halted setting
    also decodes through that kernel. With ``compiled``: the unmodified model on either cache, then every
    method at every ratio on either cache (eager, then compiled)."""
    halted = [(method, ratio) for method in methods for ratio in ratios]
    settings = []
    for kernel in kernels:
        if compiled:
            settings += [(kernel, "none", 0.0, "model", cache) for cache in ("dynamic", "static")]
            settings += [(kernel, *halt, "engine", cache) for halt in halted for cache in ("dynamic", "static")]
            continue
        decodes = ["engine", "model"] if model_decode and is_flash(kernel) else ["engine"]
        settings += [(kernel, "none", 0.0, "model", "dynamic")]
        settings += [(kernel, *halt, decode, "dynamic") for decode in decodes for halt in [("dash", 0.0)] + halted]
    return settings


def setting_name(setting: Setting) -> str:
    """``hf_default`` / ``hf_static`` for the unmodified model, ``<method>_<ratio>_eager`` / ``_compiled`` under
    halting (``_model_decode`` appended where a halted setting decodes through the model's own kernel)."""
    _, method, ratio, decode, cache = setting
    if method == "none":
        return "hf_static" if cache == "static" else "hf_default"
    name = f"{method}_{ratio}_{'compiled' if cache == 'static' else 'eager'}"
    return f"{name}_model_decode" if decode == "model" else name


def check_name(setting: Setting, kernels: list[str]) -> str:
    """The setting's key in ``meta.checks``: :func:`setting_name`, after ``<kernel>:`` where several kernels run."""
    return f"{setting[0]}:{setting_name(setting)}" if len(kernels) > 1 else setting_name(setting)


@functools.cache
def setting_halting(model, setting: Setting, packing: str) -> Halting | None:
    """The setting's one :func:`halting_for`, kept for all its calls (its static layout and CUDA graph with it)."""
    _, method, ratio, decode, _ = setting
    return halting_for(model, method, ratio, decode, packing=packing)


def run_setting(model, setting: Setting, run: Callable[[], Any], packing: str = "off") -> Any:
    """``run()`` with the language tower under the setting's kernel, halting (``packing`` for a halted batch) and decode."""
    kernel = setting[0]
    halting = setting_halting(model, setting, packing)
    with hf_compat.attention_implementation(model.model.language_model.config, kernel), halting or nullcontext():
        return run()


def measure(
    model, inputs: dict, settings: list[Setting], new_tokens: int, eager_new_tokens: int, args,
    on_repeat: Callable[[dict], None] = lambda times: None,
) -> dict:
    """Per setting: every repeat's token times (ms), the settings taking turns; ``new_tokens`` on a static
    cache (sized for them), ``eager_new_tokens`` on the dynamic one. ``on_repeat`` gets the times after each repeat."""
    cache_length = inputs["input_ids"].shape[1] + new_tokens

    def tokens_of(setting: Setting) -> int:
        return new_tokens if setting[4] == "static" else eager_new_tokens

    for setting in settings:
        for _ in range(args.warmup):
            run_setting(model, setting, lambda: timed_generate(model, inputs, min(tokens_of(setting), 8), setting[4], cache_length), args.packing)
    times: dict[Setting, list[list[float]]] = {setting: [] for setting in settings}
    for repeat in range(args.repeats):
        for setting in settings if repeat % 2 == 0 else reversed(settings):
            times[setting].append(run_setting(
                model, setting, lambda: timed_generate(model, inputs, tokens_of(setting), setting[4], cache_length), args.packing
            ))
        on_repeat(times)
    return times


def decode_agreement(model, inputs: dict, compiled: Setting, new_tokens: int, packing: str, cache_length: int) -> dict:
    """The compiled setting's decoding against its eager one (the same setting on the dynamic cache;
    ``hf_default`` for ``hf_static``) over ``new_tokens`` greedy tokens: whether the tokens agree, the
    first step where they differ (``None``: none does), and the largest ``|Δlogit|`` of the compiled
    logits teacher-forced on the eager tokens (steps up to and including that one; float32 logits)."""
    eager = (*compiled[:4], "dynamic")
    prompt_length = inputs["input_ids"].shape[1]

    def greedy(setting: Setting, forced: torch.Tensor | None = None):
        processors = [] if forced is None else [TeacherForcing(forced, prompt_length)]
        return run_setting(model, setting, lambda: static_generate(
            model, setting[4], **inputs, **generate_options(setting[4], new_tokens, cache_length), output_logits=True,
            return_dict_in_generate=True,
            logits_processor=transformers.LogitsProcessorList(processors),
        ), packing)

    reference = greedy(eager)
    tokens = reference.sequences[:, prompt_length:]
    free = greedy(compiled).sequences[:, prompt_length:]
    forced = greedy(compiled, tokens)
    differs = (free != tokens).any(dim=0).nonzero().flatten().tolist()
    first = differs[0] if differs else None
    checked = range(len(tokens[0]) if first is None else first + 1)
    diff = max((forced.logits[step].float() - reference.logits[step].float()).abs().max().item() for step in checked)
    return dict(decode_agrees=first is None, first_differing_step=first, max_logit_diff=diff)


def summary_row(token_times: list[list[float]], answer_lengths: tuple[int, ...]) -> dict:
    """TTFT, the median decode step and end to end at each of ``answer_lengths`` the runs reached (ms)."""
    ttft = statistics.median(run[0] for run in token_times)
    steps = [later - earlier for run in token_times for earlier, later in zip(run, run[1:])]
    row = dict(ttft_ms=ttft, ms_per_token=statistics.median(steps) if steps else float("nan"))
    for length in answer_lengths:
        if length <= min(len(run) for run in token_times):
            row[f"e2e_{length}_ms"] = statistics.median(run[length - 1] for run in token_times)
    return row


def crossover(row: dict, full: dict) -> float | None:
    """The answer length past which ``row``'s end to end exceeds ``full``'s; ``None`` if it never does."""
    slower_per_token = row["ms_per_token"] - full["ms_per_token"]
    if slower_per_token <= 0:
        return None
    return 1 + (full["ttft_ms"] - row["ttft_ms"]) / slower_per_token


class DecodeProfiler(transformers.LogitsProcessor):
    """Profiles the decode steps of one ``generate`` call: from the first new token's logits to the last
    one's, so the prefill stays out; records the host clock at every token too."""

    def __init__(self) -> None:
        self.profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
        self.host_s: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if not self.host_s:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
            self.profiler.start()
        self.host_s.append(time.perf_counter())
        return scores

    def stop(self) -> None:
        torch.cuda.synchronize()
        self.profiler.stop()
        torch.cuda.set_sync_debug_mode("default")


def profile_decode(model, inputs: dict, settings: list[Setting], steps: int) -> None:
    """Per setting, over ``steps`` decode steps: host ms per step, host waits per step, and the
    operators with the most self CUDA time per step (calls, CUDA and CPU µs)."""
    for setting in settings:
        kernel, method, ratio, decode, cache = setting
        run_setting(model, setting, lambda: timed_generate(model, inputs, 4, cache))
        recorder = DecodeProfiler()

        def run() -> None:
            static_generate(
                model, cache, **inputs, **generate_options(cache, steps + 1, inputs["input_ids"].shape[1] + steps + 1),
                logits_processor=transformers.LogitsProcessorList([recorder]),
            )
            recorder.stop()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_setting(model, setting, run)
        host_ms = 1000 * (recorder.host_s[-1] - recorder.host_s[0]) / steps
        waits = sum("synchronizing" in str(warning.message) for warning in caught)
        events = recorder.profiler.key_averages()
        cuda_us = sum(event.self_device_time_total for event in events) / steps
        print(f"\n## {kernel}, {method} ρ={ratio}, {decode} decode: {host_ms:.2f} ms a decode step under the profiler (host clock), "
              f"{cuda_us / 1000:.2f} ms of kernels, {waits / steps:.1f} host waits a step")
        print("| op | calls/step | self CUDA µs/step | self CPU µs/step |\n|---|---|---|---|")
        for event in sorted(events, key=lambda event: -event.self_device_time_total)[:14]:
            print(f"| {event.key[:70]} | {event.count / steps:.1f} | {event.self_device_time_total / steps:.0f} | "
                  f"{event.self_cpu_time_total / steps:.0f} |")


def prompt_of(model, length: int, batch: int, image: bool, device: torch.device) -> dict:
    if image:
        return long_prompt("qwen2_vl", model.config, length, device, torch.bfloat16)
    generator = torch.Generator(device=device).manual_seed(length)
    ids = torch.randint(1000, 100000, (batch, length), device=device, generator=generator)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


def mixed_prompt(lengths: list[int], device: torch.device) -> dict:
    """One left-padded batch of random text prompts of ``lengths`` tokens: ``input_ids`` and ``attention_mask`` ``(batch, max(lengths))``."""
    mask = left_padding_mask(lengths, device)
    generator = torch.Generator(device=device).manual_seed(mask.shape[1])
    ids = torch.randint(1000, 100000, mask.shape, device=device, generator=generator)
    return dict(input_ids=ids * mask, attention_mask=mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="*", default=[4096, 16384, 32768],
                        help="prompt lengths (batch --batch); none with --mixed times the mixed batch alone")
    parser.add_argument("--methods", nargs="+", default=["dash", "fastv", "dart"], choices=sorted(METHODS))
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.667, 0.9, 0.99])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image", action="store_true", help="one image prompt through the whole model (batch 1)")
    parser.add_argument("--mixed", type=int, nargs="+", default=None, metavar="T",
                        help="after --lengths, also one left-padded batch of text prompts of these lengths")
    parser.add_argument("--packing", default="ragged", help="HaltingConfig.packing of the halted settings")
    parser.add_argument("--kernels", nargs="+", default=["sdpa"], help="the language tower's attention implementations")
    parser.add_argument("--model-decode", action="store_true",
                        help="under a FlashAttention kernel, also decode every halted setting through that kernel")
    parser.add_argument("--new-tokens", type=int, default=max(ANSWER_LENGTHS))
    parser.add_argument("--long", type=int, nargs="*", default=[], metavar="T",
                        help="lengths of --lengths whose answers are --long-new-tokens long instead")
    parser.add_argument("--long-new-tokens", type=int, default=max(ANSWER_LENGTHS))
    parser.add_argument("--eager-new-tokens", type=int, default=None,
                        help="answer length of the dynamic-cache settings (hf_default, _eager); default: as the static ones")
    parser.add_argument("--compiled", action="store_true",
                        help="HF default and HF static, and every halted setting eager and compiled (static cache)")
    parser.add_argument("--check-tokens", type=int, default=64, help="greedy tokens of each compiled-vs-eager check")
    parser.add_argument("--profile", type=int, default=None, metavar="T", help="profile decode steps at this T instead")
    add_timing_arguments(parser, warmup=1, repeats=2)
    args = parser.parse_args()
    if args.image and args.batch != 1:
        parser.error("--image runs batch 1")
    before_llm = [method for method in args.methods if issubclass(METHODS[method], BeforeLanguageModel)]
    if before_llm and not args.image:
        parser.error(f"{before_llm} pick visual tokens before the LLM: they need --image (the text prompt has none)")

    device = torch.device("cuda")
    model = random_model(full_size_config("qwen2_vl"), dtype=torch.bfloat16, device=device)
    model.generation_config.eos_token_id = None
    settings = settings_of(args.methods, args.ratios, args.kernels, args.model_decode, args.compiled)
    if args.profile is not None:
        with torch.no_grad():
            profile_decode(model, prompt_of(model, args.profile, args.batch, args.image, device), settings, steps=16)
        return
    prompts = [(length, lambda length=length: prompt_of(model, length, args.batch, args.image, device)) for length in args.lengths]
    if args.mixed:
        prompts.append(("+".join(map(str, args.mixed)), lambda: mixed_prompt(args.mixed, device)))
    rows = []
    meta = dict(
        model="Qwen2-VL-7B shapes, random bf16" + (", whole model" if args.image else ""), command=" ".join(sys.argv),
        kernels=args.kernels, batch=args.batch, image=args.image, mixed=args.mixed, packing=args.packing,
        model_decode=args.model_decode, new_tokens=args.new_tokens, eager_new_tokens=args.eager_new_tokens, long=args.long,
        long_new_tokens=args.long_new_tokens, compiled=args.compiled, check_tokens=args.check_tokens, warmup=args.warmup,
        repeats=args.repeats, checks={},
    )
    with torch.no_grad():
        for lengths, make_inputs in prompts:
            inputs = make_inputs()
            new_tokens = args.long_new_tokens if lengths in args.long else args.new_tokens
            eager_new_tokens = min(new_tokens, args.eager_new_tokens or new_tokens)
            cache_length = inputs["input_ids"].shape[1] + new_tokens
            checks = {  # before the timing: a compiled setting that disagrees shows at once
                setting: decode_agreement(model, inputs, setting, min(args.check_tokens, new_tokens), args.packing, cache_length)
                for setting in settings if args.compiled and setting[4] == "static"
            }
            meta["checks"][str(lengths)] = {check_name(setting, args.kernels): check for setting, check in checks.items()}
            print(json.dumps(meta["checks"][str(lengths)]), flush=True)
            shape = (lengths, inputs["input_ids"].shape[0], tuple(length for length in ANSWER_LENGTHS if length <= new_tokens))

            def save(times: dict | None = None, shape: tuple = shape, checks: dict = checks) -> None:
                if args.out:
                    write_rows(rows + (checked_rows(times, *shape, checks, echo=False) if times else []), args.out, **meta)

            save()
            rows += checked_rows(measure(model, inputs, settings, new_tokens, eager_new_tokens, args, on_repeat=save), *shape, checks)
            save()
            del inputs
            torch.cuda.empty_cache()

    answer_lengths = tuple(length for length in ANSWER_LENGTHS if length <= max([args.new_tokens] + [args.long_new_tokens] * bool(args.long)))
    columns = {"T": "{T}", "B": "{batch}", "kernel": "{kernel}", "setting": "{setting}", "TTFT ms": "{ttft_ms:.0f}",
               "TTFT ×": "{ttft_speedup:.2f}", "ms/token": "{ms_per_token:.2f}", "decode vs full": "{decode_ratio:.3f}"}
    for answer in answer_lengths:
        columns[f"{answer} tok ms"] = f"{{e2e_{answer}_ms:.0f}}"
        columns[f"{answer} tok ×"] = f"{{e2e_{answer}_speedup:.2f}}"
    columns[f"{answer_lengths[-1]} tok × vs first"] = f"{{e2e_{answer_lengths[-1]}_vs_first:.2f}}"
    columns["crossover"] = "{crossover_tokens}"
    if args.compiled:
        columns.update(agrees="{decode_agrees}", **{"max |Δlogit|": "{max_logit_diff:.3f}", "first diff": "{first_differing_step}"})
    print_table([dict(row, crossover_tokens=row["crossover_tokens"] or "never") for row in rows], columns)
    report_run(rows, args.out, **meta)


def checked_rows(
    times: dict[Setting, list[list[float]]], lengths: int | str, batch: int, answer_lengths: tuple[int, ...], checks: dict,
    echo: bool = True,
) -> list[dict]:
    """:func:`summary_rows` with each compiled setting's ``checks`` (:func:`decode_agreement`) added to its row."""
    rows = summary_rows(times, lengths, batch, answer_lengths, echo)
    for setting, row in zip(times, rows):
        row.update(checks.get(setting, {}))
    return rows


def summary_rows(
    times: dict[Setting, list[list[float]]], lengths: int | str, batch: int, answer_lengths: tuple[int, ...], echo: bool = True
) -> list[dict]:
    """One row per setting: its times and its ratios against the unmodified model under the same kernel and
    under the first; where the unmodified model ran on both caches, against the faster of the two for each metric
    (each row printed as JSON with ``echo``)."""
    first_kernel = next(iter(times))[0]
    unmodified: dict[str, list[dict]] = {}
    for setting, token_times in times.items():
        if setting[1] == "none":
            unmodified.setdefault(setting[0], []).append(summary_row(token_times, answer_lengths))
    full_of = {
        kernel: {name: min(row[name] for row in found if name in row) for name in set().union(*found)}
        for kernel, found in unmodified.items()
    }
    rows = []
    for setting, token_times in times.items():
        kernel, method, ratio, decode, cache = setting
        row = dict(
            T=lengths, batch=batch, setting=setting_name(setting), kernel=kernel, decode=decode, cache=cache,
            method=method, ratio=ratio, **summary_row(token_times, answer_lengths),
        )
        full = full_of[kernel]
        row["ttft_speedup"] = full["ttft_ms"] / row["ttft_ms"]
        row["decode_ratio"] = row["ms_per_token"] / full["ms_per_token"]
        for answer in answer_lengths:
            if f"e2e_{answer}_ms" in row:
                row[f"e2e_{answer}_speedup"] = full[f"e2e_{answer}_ms"] / row[f"e2e_{answer}_ms"]
        last = answer_lengths[-1]
        if f"e2e_{last}_ms" in row:
            row[f"e2e_{last}_vs_first"] = full_of[first_kernel][f"e2e_{last}_ms"] / row[f"e2e_{last}_ms"]
        point = crossover(row, full)
        row["crossover_tokens"] = None if point is None else round(point)
        rows.append(row)
        if echo:
            print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()

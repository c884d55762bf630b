"""The lmms-eval plugin: registered through the entry point, runs the real ``lmms-eval`` CLI end to
end on a tiny saved model and the offline ``dash_shapes`` task, answers exactly as the Python API
does, and rejects bad ``model_args``. Every run starts in an empty working directory: the tasks and the
scenes model are found where the package is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from dash_vl.api import load  # noqa: E402
from dash_vl.integrations.lmms_eval.offline_tasks import TASKS_DIRECTORY  # noqa: E402
from dash_vl.testing import random_model, tiny_config, tiny_processor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = TASKS_DIRECTORY
LIMIT = 4


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for family in ("qwen2_vl", "internvl", "llava", "qwen3_vl"):
        folder = tmp_path_factory.mktemp(family)
        processor = tiny_processor(family)
        random_model(tiny_config(family, processor.tokenizer)).save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[family] = folder
    return folders


def run_lmms_eval(
    model: str, model_args: str, output: Path, task: str = "dash_shapes", limit: int = LIMIT, processes: int = 1,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """The lmms-eval CLI in a subprocess started in ``output`` (an empty folder, not the repository), the task
    folder given as ``dash-vl lmms-eval-tasks`` prints it; ``processes > 1`` launches it data-parallel with
    torchrun (the launcher ``accelerate launch`` wraps; on the CPU the processes talk through gloo)."""
    output.mkdir(parents=True, exist_ok=True)
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else []
    command = [
        sys.executable, *launcher, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", task,
        "--include_path", tasks_folder(), "--device", "cpu", "--batch_size", "2", "--limit", str(limit),
        "--output_path", str(output), "--log_samples", *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(command, cwd=output, env=env, capture_output=True, text=True, timeout=600)


def tasks_folder() -> str:
    """What ``dash-vl lmms-eval-tasks`` prints."""
    run = subprocess.run([shutil.which("dash-vl"), "lmms-eval-tasks"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_tasks_folder_is_the_installed_package_data():
    folder = Path(tasks_folder())
    assert folder == TASKS_DIRECTORY and folder.is_absolute()
    for task in ("dash_scenes", "dash_scenes_rounds", "dash_shapes"):
        text = (folder / task / f"{task}.yaml").read_text()
        assert f"test: {task}.jsonl" in text  # relative to the YAML, which lmms-eval resolves


@pytest.mark.slow
@pytest.mark.parametrize("first_import", ["lmms_eval.models", "dash_vl.integrations.lmms_eval.models"])
def test_models_are_registered_through_the_entry_point(first_import):
    """In a fresh process, whichever module is imported first (dash_vl's models import lmms-eval's
    registry, which loads the entry points)."""
    code = (
        f"import {first_import}; from lmms_eval.models import get_model, list_available_models; "
        "print(sorted(name for name in list_available_models() if name.startswith('dash_'))); "
        "print(get_model('dash_qwen2_vl').__name__)"
    )
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert output.returncode == 0, output.stderr
    assert output.stdout.split("\n")[:2] == [
        "['dash_internvl', 'dash_llava', 'dash_llava_next', 'dash_llava_onevision', 'dash_qwen2_vl', 'dash_qwen3_5', 'dash_qwen3_vl']",
        "DashQwen2VL",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,model,knobs",
    [
        ("qwen2_vl", "dash_qwen2_vl", dict(method="visionzip", ratio=0.5)),
        ("internvl", "dash_internvl", dict(method="dash", ratio=0.75)),
        pytest.param("llava", "dash_llava", dict(method="visionzip", ratio=0.5), marks=pytest.mark.slow),  # before the projector
        pytest.param("qwen3_vl", "dash_qwen3_vl", dict(method="fastv", ratio=0.5), marks=pytest.mark.slow),  # DeepStack
    ],
)
def test_cli_end_to_end_matches_the_python_api(saved_models, tmp_path, family, model, knobs):
    folder = saved_models[family]
    args = ",".join([f"pretrained={folder}", "dtype=float32"] + [f"{k}={v}" for k, v in knobs.items()])
    finished = run_lmms_eval(model, args, tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("*_results.json")).read_text())
    assert results["config"]["model_args"] == args
    assert "exact_match,none" in results["results"]["dash_shapes"]
    samples = [json.loads(line) for line in next(tmp_path.rglob("*_samples_dash_shapes.jsonl")).read_text().splitlines()]
    assert sorted(sample["doc_id"] for sample in samples) == list(range(LIMIT))

    sys.path.insert(0, str(TASK_DIR / "dash_shapes"))
    try:
        from utils import dash_shapes_doc_to_text, dash_shapes_doc_to_visual
    finally:
        sys.path.pop(0)
    docs = [json.loads(line) for line in (TASK_DIR / "dash_shapes" / "dash_shapes.jsonl").read_text().splitlines()]
    vlm = load(folder, dtype="float32", **knobs)
    for sample in samples:
        doc = docs[sample["doc_id"]]
        question = dash_shapes_doc_to_text(doc, {"post_prompt": " Answer with one word."})
        assert sample["input"] == question
        assert sample["filtered_resps"] == vlm.ask(question, images=dash_shapes_doc_to_visual(doc), max_new_tokens=8)


@pytest.mark.slow
def test_data_parallel_processes_answer_their_shards_as_one_process_does(saved_models, tmp_path):
    args = f"pretrained={saved_models['qwen2_vl']},dtype=float32,method=dash,ratio=0.5"
    answers = {}
    for processes in (1, 2):
        output = tmp_path / str(processes)
        finished = run_lmms_eval("dash_qwen2_vl", args, output, limit=6, processes=processes)
        assert finished.returncode == 0, finished.stderr[-3000:]
        samples = next(output.rglob("*_samples_dash_shapes.jsonl")).read_text().splitlines()
        answers[processes] = {sample["doc_id"]: sample["filtered_resps"] for sample in map(json.loads, samples)}
    assert "Running on rank 1" in finished.stdout + finished.stderr  # the second process evaluated its shard
    assert sorted(answers[2]) == list(range(6))
    assert answers[2] == answers[1]


@pytest.mark.slow
def test_shipped_scenes_model_scores_through_the_cli(tmp_path):
    """The trained model answers the first held-out ``dash_scenes`` questions exactly (all eight
    kinds, the relations and the written word included)."""
    finished = run_lmms_eval("dash_qwen2_vl", "pretrained=dash-vl/scenes,method=none", tmp_path, task="dash_scenes", limit=10)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("*_results.json")).read_text())
    assert results["results"]["dash_scenes"]["exact_match,none"] == 1.0


@pytest.mark.slow
def test_multi_round_task_asks_each_question_in_its_own_round(tmp_path):
    """``dash_scenes_rounds`` asks 2-4 questions of one scene, one per round; the trained model
    answers every round right, so each round must have seen its own question."""
    finished = run_lmms_eval(
        "dash_qwen2_vl", "pretrained=dash-vl/scenes,method=none", tmp_path, task="dash_scenes_rounds", limit=6
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(next(tmp_path.rglob("*_results.json")).read_text())["results"]["dash_scenes_rounds"]
    assert results["exact_match,none"] == results["all_rounds_right,none"] == 1.0
    documents = [json.loads(line) for line in (TASK_DIR / "dash_scenes_rounds" / "dash_scenes_rounds.jsonl").read_text().splitlines()]
    for sample in map(json.loads, next(tmp_path.rglob("*_samples_dash_scenes_rounds.jsonl")).read_text().splitlines()):
        answers = documents[sample["doc_id"]]["answers"]
        assert len(answers) >= 2 and sample["filtered_resps"] == answers


def test_unknown_model_args_and_wrong_family_are_clear_errors(saved_models):
    from dash_vl.integrations.lmms_eval.models import DashInternVL, DashQwen2VL

    with pytest.raises(ValueError, match="unknown model_args \\['bogus'\\]"):
        DashQwen2VL(pretrained=str(saved_models["qwen2_vl"]), device="cpu", bogus=1)
    with pytest.raises(ValueError, match="evaluates \\('internvl',\\) checkpoints"):
        DashInternVL(pretrained=str(saved_models["qwen2_vl"]), device="cpu")
    with pytest.raises(ValueError, match="ratio must be in"):
        DashQwen2VL(pretrained=str(saved_models["qwen2_vl"]), device="cpu", ratio=1.5)
    with pytest.raises(ValueError, match=r"method=none runs the unmodified model .*\(got ratio=0.5\)"):
        DashQwen2VL(pretrained=str(saved_models["qwen2_vl"]), device="cpu", method="none", ratio=0.5)
    with pytest.raises(ValueError, match="vision_rule must be one of"):
        DashQwen2VL(pretrained=str(saved_models["qwen2_vl"]), device="cpu", vision_rule="lowest")


@pytest.mark.slow
def test_lmms_eval_exits_0_on_an_error_unless_verbosity_is_debug(saved_models, tmp_path):
    """lmms-eval's own behaviour (``cli_evaluate`` catches every exception, prints it and returns): the check a
    script can use is ``--verbosity DEBUG`` (the error propagates, exit code 1) or the results file's absence."""
    args = f"pretrained={saved_models['qwen2_vl']},ratio=2"
    quiet = run_lmms_eval("dash_qwen2_vl", args, tmp_path / "quiet")
    assert quiet.returncode == 0 and "ratio must be in [0, 1), got 2" in quiet.stdout + quiet.stderr
    assert not list((tmp_path / "quiet").rglob("*_results.json"))
    debug = run_lmms_eval("dash_qwen2_vl", args, tmp_path / "debug", extra=("--verbosity", "DEBUG"))
    assert debug.returncode != 0 and "ratio must be in [0, 1), got 2" in debug.stderr


@pytest.mark.parametrize("method", ["dart_prompt_order", "vispruner", "divprune", "cdpruner"])
def test_new_method_values_answer_with_their_own_policy(saved_models, method):
    """``method=`` takes every registered policy; its defaults (layer, scope) apply and it answers a query."""
    from PIL import Image

    from dash_vl.api import Query
    from dash_vl.integrations.lmms_eval.models import DashQwen2VL
    from dash_vl.methods import METHODS

    lmm = DashQwen2VL(pretrained=str(saved_models["qwen2_vl"]), device="cpu", dtype="float32", method=method, ratio="0.5")
    config = lmm.vlm.halting.config
    assert (config.method, config.start_layer) == (method, METHODS[method].default_start_layer)
    lmm.vlm.answer([Query("What colour?", (Image.new("RGB", (112, 112), "red"),))], max_new_tokens=2)
    report = lmm.vlm.last_report
    assert report.kept_tokens_per_layer[-1][0] < report.prompt_tokens[0]


def test_qwen3_vl_model_answers_as_the_python_api(saved_models):
    """``dash_qwen3_vl`` takes Qwen3-VL checkpoints only and answers an image query as ``load(...).ask`` does."""
    from PIL import Image

    from dash_vl.api import Query
    from dash_vl.integrations.lmms_eval.models import DashQwen2VL, DashQwen3VL

    folder = str(saved_models["qwen3_vl"])
    with pytest.raises(ValueError, match="evaluates \\('qwen2_vl', 'qwen2_5_vl'\\) checkpoints"):
        DashQwen2VL(pretrained=folder, device="cpu")
    lmm = DashQwen3VL(pretrained=folder, device="cpu", dtype="float32", method="dash", ratio="0.5")
    image = Image.new("RGB", (112, 112), "red")
    answer = lmm.vlm.answer([Query("What colour?", (image,))], max_new_tokens=4)[0]
    assert answer == load(folder, dtype="float32", ratio=0.5).ask("What colour?", images=[image], max_new_tokens=4)

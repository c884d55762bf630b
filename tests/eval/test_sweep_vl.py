"""``eval/sweep_vl.py`` end to end on a saved tiny VLM and the offline ``dash_shapes`` task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dash_vl.cli import main

pytestmark = pytest.mark.slow  # runs eval/sweep_vl.py in a subprocess

ROOT = Path(__file__).resolve().parents[2]


def sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "eval" / "sweep_vl.py"), *args], capture_output=True, text=True,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny") / "qwen2_vl"
    assert main(["make-random-model", str(directory)]) == 0
    return directory


def test_sweep_writes_tidy_rows_plots_and_resumes(tiny_model, tmp_path):
    results = tmp_path / "sweep.jsonl"
    settings = ["--tasks", "dash_shapes", "--limit", "4", "--batch-size", "2", "--ratios", "0", "0.5", "0.99", "--methods", "dash", "fastv",
                "--results", str(results)]
    first = sweep(str(tiny_model), *settings)
    assert first.returncode == 0, first.stderr
    header, *rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert header["header"]["model"] == str(tiny_model) and header["header"]["limit"] == 4
    assert rows[0]["peak_memory_gib"] is None  # on the CPU: JSON null, not NaN
    assert [(r["cell"]["method"], r["cell"]["ratio"]) for r in rows] == [
        ("none", 0.0), ("dash", 0.5), ("dash", 0.99), ("fastv", 0.5), ("fastv", 0.99)
    ]
    unmodified, dash_half = rows[0], rows[1]
    assert unmodified["n"] == 4 and unmodified["relative_flops"] == 1.0
    assert unmodified["kept_tokens"] == unmodified["prompt_tokens"] > 0
    assert dash_half["kept_tokens"] < dash_half["prompt_tokens"] == unmodified["prompt_tokens"]
    assert 0 < dash_half["relative_flops"] < 1 and dash_half["prefill_ms"] > 0
    assert all(0.0 <= r["score"] <= 1.0 for r in rows)
    for suffix in ("_ratio.png", "_flops.png", "_latency.png", ".csv", ".md"):
        assert (tmp_path / f"sweep{suffix}").stat().st_size > 0
    assert "| dash_shapes | none | - | " in (tmp_path / "sweep.md").read_text()
    again = sweep(str(tiny_model), *settings)
    assert again.returncode == 0, again.stderr
    assert len(results.read_text().splitlines()) == len(rows) + 1


@pytest.mark.slow
def test_results_of_another_model_or_limit_are_refused_not_reported(tiny_model, tmp_path):
    other = tmp_path / "other"
    assert main(["make-random-model", str(other), "--seed", "1"]) == 0
    results = tmp_path / "sweep.jsonl"
    settings = ["--tasks", "dash_shapes", "--batch-size", "2", "--ratios", "0", "0.5", "--methods", "dash", "--results", str(results)]
    first = sweep(str(tiny_model), "--limit", "2", *settings)
    assert first.returncode == 0, first.stderr
    written = results.read_text()
    another_model = sweep(str(other), "--limit", "2", *settings)
    assert another_model.returncode != 0
    assert f"holds results of another configuration (model: {tiny_model} -> {other}; weights: " in another_model.stderr
    more_documents = sweep(str(tiny_model), "--limit", "3", *settings)
    assert more_documents.returncode != 0 and "(limit: 2 -> 3)" in more_documents.stderr
    assert results.read_text() == written


def test_sweep_refuses_an_unknown_task(tiny_model, tmp_path):
    run = sweep(str(tiny_model), "--tasks", "mme", "--results", str(tmp_path / "x.jsonl"))
    assert run.returncode != 0 and "no offline task 'mme'" in run.stderr


def test_sweep_refuses_a_multi_round_task(tiny_model, tmp_path):
    run = sweep(str(tiny_model), "--tasks", "dash_scenes_rounds", "--results", str(tmp_path / "x.jsonl"))
    assert run.returncode != 0 and "'generate_until_multi_round'; the sweep answers generate_until tasks only" in run.stderr

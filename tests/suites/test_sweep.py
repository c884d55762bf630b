"""Resumable sweeps: finished cells are skipped, a file of another configuration is refused, rows are strict
JSON written one synced line at a time, a torn or cut-short end is dropped with a warning, Ctrl-C stops cleanly."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dash_vl.suites.sweep import ResultStore, cell_key, pooled, run_sweep, sweep_header, weights_fingerprint

ROOT = Path(__file__).resolve().parents[2]
HEADER = dict(model="tiny", weights="abc", limit=8)


def no_constants(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line, parse_constant=no_constants) for line in path.read_text().splitlines()]


def test_cell_key_ignores_item_order():
    assert cell_key(dict(method="dash", ratio=0.5)) == cell_key(dict(ratio=0.5, method="dash"))


def test_sweep_resumes_and_flattens_rows(tmp_path):
    path = tmp_path / "sweep.jsonl"
    cells = [dict(method=m, ratio=r) for m in ("dash", "random") for r in (0.5, 0.9)]
    measured = []

    def measure(cell):
        measured.append(cell)
        return [dict(task="t", n=2, score=cell["ratio"])]

    run_sweep(cells[:3], measure, ResultStore(path, HEADER), "first")
    assert measured == cells[:3]
    measured.clear()
    run_sweep(cells, measure, ResultStore(path, HEADER), "resumed")
    assert measured == cells[3:]
    rows = ResultStore(path, HEADER).rows()
    assert len(rows) == 4
    assert rows[0] == dict(method="dash", ratio=0.5, task="t", n=2, score=0.5)
    ResultStore(path, HEADER).write_csv(tmp_path / "sweep.csv")
    with open(tmp_path / "sweep.csv") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == ["dash", "dash", "random", "random"]


@pytest.mark.parametrize("change,expected", [
    (dict(model="other"), "model: tiny -> other"),
    (dict(limit=16), "limit: 8 -> 16"),
    (dict(weights="def"), "weights: abc -> def"),
])
def test_file_of_another_configuration_is_refused(tmp_path, change, expected):
    path = tmp_path / "sweep.jsonl"
    run_sweep([dict(method="dash")], lambda cell: [dict(n=1, score=1.0)], ResultStore(path, HEADER))
    with pytest.raises(ValueError, match=f"holds results of another configuration \\({expected}\\)"):
        ResultStore(path, {**HEADER, **change})


def test_file_without_header_is_refused(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"cell": {"method": "dash"}, "n": 1}) + "\n")
    with pytest.raises(ValueError, match="has no header line"):
        ResultStore(path, HEADER)


def test_header_records_versions_and_nested_differences_are_named(tmp_path):
    header = sweep_header("tiny", "abc", knobs=dict(seed=0))
    assert set(header["versions"]) == {"python", "torch", "transformers", "dash_vl"}
    path = tmp_path / "sweep.jsonl"
    ResultStore(path, header)
    with pytest.raises(ValueError, match="knobs.seed: 0 -> 1"):
        ResultStore(path, {**header, "knobs": dict(seed=1)})


def test_undefined_measurements_are_written_as_null(tmp_path):
    path = tmp_path / "sweep.jsonl"
    store = ResultStore(path, {**HEADER, "peak": math.nan})
    store.add(dict(method="dash", ratio=0.5), [dict(n=1, peak_memory_gib=math.nan, score=math.inf)])
    header, row = read_lines(path)
    assert header == {"header": {**HEADER, "peak": None}}
    assert row["peak_memory_gib"] is None and row["score"] is None


def test_torn_last_line_is_dropped_with_a_warning_and_the_cell_runs_again(tmp_path):
    path = tmp_path / "sweep.jsonl"
    cells = [dict(ratio=0.5), dict(ratio=0.9)]
    run_sweep(cells, lambda cell: [dict(n=1, score=cell["ratio"])], ResultStore(path, HEADER))
    path.write_text(path.read_text()[:-25])  # killed while writing the second cell's line
    with pytest.warns(UserWarning, match="dropped the torn last line 3"):
        store = ResultStore(path, HEADER)
    assert run_sweep(cells, lambda cell: [dict(n=1, score=cell["ratio"])], store) == 1
    assert [row["score"] for row in ResultStore(path, HEADER).rows()] == [0.5, 0.9]
    assert len(read_lines(path)) == 3


def test_cell_cut_short_between_its_rows_runs_again(tmp_path):
    path = tmp_path / "sweep.jsonl"
    two_rows = lambda cell: [dict(n=1, length=1024), dict(n=1, length=2048)]  # noqa: E731
    run_sweep([dict(ratio=0.5)], two_rows, ResultStore(path, HEADER))
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))  # header and the first row only
    with pytest.warns(UserWarning, match="1 of 2 rows of the cut-short cell"):
        store = ResultStore(path, HEADER)
    assert run_sweep([dict(ratio=0.5)], two_rows, store) == 1
    assert [row["length"] for row in ResultStore(path, HEADER).rows()] == [1024, 2048]


def test_damaged_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "sweep.jsonl"
    run_sweep([dict(ratio=0.5), dict(ratio=0.9)], lambda cell: [dict(n=1)], ResultStore(path, HEADER))
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "{broken\n" + lines[2])
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        ResultStore(path, HEADER)


def test_weights_fingerprint_tells_checkpoints_of_one_architecture_apart():
    import torch

    torch.manual_seed(0)
    first = torch.nn.Linear(8, 8)
    second = torch.nn.Linear(8, 8)
    assert weights_fingerprint(first) == weights_fingerprint(first)
    assert weights_fingerprint(first) != weights_fingerprint(second)


SLOW_SWEEP = """
import sys, time
from dash_vl.suites.sweep import ResultStore, run_sweep

def measure(cell):
    time.sleep(0.2 if cell["ratio"] == 0 else 600)
    return [dict(n=1)]

run_sweep([dict(ratio=0), dict(ratio=1)], measure, ResultStore(sys.argv[1], {"model": "m"}), "demo")
"""


@pytest.mark.slow  # a subprocess that imports torch
def test_ctrl_c_stops_with_one_line_saying_how_to_resume(tmp_path):
    path = tmp_path / "sweep.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SWEEP, str(path)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, also when pytest runs in the background
    )
    deadline = time.monotonic() + 300
    while (not path.exists() or len(path.read_text().splitlines()) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(path.read_text().splitlines()) == 2, "the first cell was not saved within 300 s"
    time.sleep(1.0)  # the first cell is saved; the second one's measurement (600 s) is under way
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert "demo: interrupted; 1 of 2 pending cells finished and saved in" in stderr
    assert "rerun the same command to resume" in stderr
    assert len(read_lines(path)) == 2


def test_running_out_of_gpu_memory_stops_with_one_line_and_keeps_the_finished_cells(tmp_path, capsys):
    import torch

    def measure(cell):
        if cell["ratio"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.71 GiB. GPU 0 has a total capacity of 79 GiB")
        return [dict(n=1)]

    path = tmp_path / "sweep.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        run_sweep([dict(ratio=0), dict(ratio=1)], measure, ResultStore(path, HEADER), "demo")
    assert exit_info.value.code == 1
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == (
        f"demo: out of GPU memory in cell {{'ratio': 1}} (CUDA out of memory): free the GPU or use smaller batches; "
        f"1 of 2 pending cells finished and saved in {path}; rerun the same command to resume"
    )
    assert len(read_lines(path)) == 2


def test_pooled_means_are_weighted_by_prompt_count():
    rows = [
        dict(method="dash", n=1, accuracy=1.0, flops=0.5),
        dict(method="dash", n=3, accuracy=0.0, flops=0.9),
        dict(method="random", n=2, accuracy=0.5, flops=0.7),
    ]
    means = pooled(rows, ("method",), "accuracy", "flops")
    assert means[("dash",)] == pytest.approx((0.8, 0.25))
    assert means[("random",)] == pytest.approx((0.7, 0.5))

"""Resumable sweeps: finished cells are skipped, rows stay tidy, pooling weights by prompt count."""

from __future__ import annotations

import csv

import pytest

from dash_vl.sweep import ResultStore, cell_key, pooled, run_sweep


def test_cell_key_ignores_item_order():
    assert cell_key(dict(method="dash", ratio=0.5)) == cell_key(dict(ratio=0.5, method="dash"))


def test_sweep_resumes_and_flattens_rows(tmp_path):
    path = tmp_path / "sweep.jsonl"
    cells = [dict(method=m, ratio=r) for m in ("dash", "random") for r in (0.5, 0.9)]
    measured = []

    def measure(cell):
        measured.append(cell)
        return [dict(task="t", n=2, score=cell["ratio"])]

    run_sweep(cells[:3], measure, ResultStore(path), "first")
    assert measured == cells[:3]
    measured.clear()
    run_sweep(cells, measure, ResultStore(path), "resumed")
    assert measured == cells[3:]
    rows = ResultStore(path).rows()
    assert len(rows) == 4
    assert rows[0] == dict(method="dash", ratio=0.5, task="t", n=2, score=0.5)
    ResultStore(path).write_csv(tmp_path / "sweep.csv")
    with open(tmp_path / "sweep.csv") as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == ["dash", "dash", "random", "random"]


def test_pooled_means_are_weighted_by_prompt_count():
    rows = [
        dict(method="dash", n=1, accuracy=1.0, flops=0.5),
        dict(method="dash", n=3, accuracy=0.0, flops=0.9),
        dict(method="random", n=2, accuracy=0.5, flops=0.7),
    ]
    means = pooled(rows, ("method",), "accuracy", "flops")
    assert means[("dash",)] == pytest.approx((0.8, 0.25))
    assert means[("random",)] == pytest.approx((0.7, 0.5))

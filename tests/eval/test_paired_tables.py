"""Paired accuracy tables: per-prompt scores stored by the sweep, paired prompt by prompt per setting and
length; older rows (group means only) paired group by group and given no per-length interval."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from dash_vl.suites.prompt_scoring import ScoredAnswer
from dash_vl.suites.sweep import ResultStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "eval"))
import accuracy_grid  # noqa: E402
import paired_tables  # noqa: E402

sys.path.pop(0)
SCORES = {2048: [0.1, 0.5, 0.9, 0.3, 0.7, 0.2, 0.6, 0.4], 4096: [0.0, 0.8, 0.4, 0.6, 0.2, 0.9, 0.1, 0.5]}


def rows_of(method: str, ratio: float, shift: dict[int, float], per_prompt: bool = True) -> list[dict]:
    """One setting's rows: SCORES moved by ``shift[length]`` at every prompt."""
    rows = []
    for length, scores in SCORES.items():
        moved = [s + shift[length] for s in scores]
        row = dict(
            method=method, ratio=ratio, start_layer="default" if method != "none" else "-",
            question="after_context" if method != "none" else "-", task="lcc", length=length, n=len(moved),
            edit_similarity=sum(moved) / len(moved), decision_layer=9 if method != "none" else "-",
            relative_flops=0.66 if method != "none" else 1.0,
        )
        rows.append({**row, "scores": moved} if per_prompt else row)
    return rows


def test_measure_cell_keeps_each_prompt_score_in_suite_order():
    samples = [SimpleNamespace(task="lcc", length=n, value=v) for n in (2048, 4096) for v in (0.25, 0.75, 0.5)]
    groups = [samples[:2], samples[2:4], samples[4:]]

    def answer(group, config):
        return [ScoredAnswer("x", sample.value, 0.5, 10, 20) for sample in group]

    cell = dict(method="dash", ratio=0.5, start_layer="default", question="after_context")
    rows = accuracy_grid.measure_cell(cell, groups, answer, 24, "edit_similarity")
    assert [(row["length"], row["scores"]) for row in rows] == [(2048, [0.25, 0.75, 0.5]), (4096, [0.25, 0.75, 0.5])]
    assert rows[0]["edit_similarity"] == 0.5


def test_a_gain_at_one_length_holds_there_and_is_undecided_where_scores_tie():
    rows = (
        rows_of("none", 0.0, {2048: 0.0, 4096: 0.0}) + rows_of("dash", 0.5, {2048: 0.1, 4096: 0.0})
        + rows_of("random", 0.5, {2048: 0.0, 4096: 0.0}) + rows_of("dash_highest", 0.5, {2048: 0.2, 4096: 0.0})
    )
    lines = paired_tables.length_table(rows, "edit_similarity").splitlines()[2:]
    at = {line.split(" | ")[5]: line for line in lines}
    assert "| +0.100 [+0.100, +0.100] holds | +0.100 [+0.100, +0.100] holds | -0.100 [-0.100, -0.100] fails |" in at["2048"]
    assert "+0.000 [+0.000, +0.000] undecided | +0.000 [+0.000, +0.000] undecided |" in at["4096"]
    assert "| 16 prompts |" in at["all"]


def test_the_pooled_table_compares_with_unmodified_and_with_random_at_the_same_flops():
    rows = rows_of("none", 0.0, {2048: 0.0, 4096: 0.0}) + rows_of("dash", 0.5, {2048: -0.02, 4096: -0.02})
    rows += rows_of("random", 0.5, {2048: -0.2, 4096: -0.2})
    table = paired_tables.pooled_table(rows, "edit_similarity")
    dash = next(line for line in table.splitlines() if "| dash |" in line)
    assert "-0.020 [-0.020, -0.020] holds" in dash  # within 0.03 of the unmodified model
    assert "+0.180 [+0.180, +0.180] holds" in dash
    assert "16 prompts" in dash


def test_group_means_are_paired_by_group_and_get_no_per_length_interval():
    rows = rows_of("none", 0.0, {2048: 0.0, 4096: 0.0}, per_prompt=False)
    rows += rows_of("dash", 0.5, {2048: 0.1, 4096: 0.1}, per_prompt=False)
    rows += rows_of("random", 0.5, {2048: 0.0, 4096: 0.0}, per_prompt=False)
    assert "| 2 groups |" in paired_tables.pooled_table(rows, "edit_similarity")
    lengths = paired_tables.length_table(rows, "edit_similarity").splitlines()[2:]
    assert [line.split(" | ")[5:7] for line in lengths] == [["all", "2 groups"]]


def test_the_command_reads_a_results_file_with_a_header_and_an_older_one_without(tmp_path, monkeypatch):
    """``paired_tables.py`` reads finished files as they are, never writing them: one with a header (as the
    sweep writes it, here the unmodified model and random) and an older one with no header line (DASH)."""
    store = ResultStore(tmp_path / "new.jsonl", {"model": "m"})
    for row in rows_of("none", 0.0, {2048: 0.0, 4096: 0.0}) + rows_of("random", 0.5, {2048: 0.0, 4096: 0.0}):
        store.add({key: row[key] for key in ("method", "ratio", "task", "length")}, [row])
    older = tmp_path / "old.jsonl"
    older.write_text("".join(
        json.dumps({"cell": {key: row[key] for key in ("method", "ratio", "task", "length")}, **row}) + "\n"
        for row in rows_of("dash", 0.5, {2048: 0.1, 4096: 0.1})
    ))
    before = {path: path.read_text() for path in (tmp_path / "new.jsonl", older)}
    output = tmp_path / "paired.md"
    monkeypatch.setattr(sys, "argv", ["paired_tables.py", str(tmp_path / "new.jsonl"), str(older), "--output", str(output)])
    paired_tables.main()
    dash = next(line for line in output.read_text().splitlines() if "| dash |" in line)
    assert "+0.100 [+0.100, +0.100] holds" in dash  # against random, prompt by prompt across the two files
    assert {path: path.read_text() for path in before} == before


def test_the_same_setting_from_two_prompt_sets_is_refused_and_a_repeat_is_one_row(tmp_path, monkeypatch, capsys):
    """Two files that hold the same setting over other prompts (another count per length) cannot share a
    table; the same prompts measured again with the same scores (an unmodified cell run twice) can."""
    rows = rows_of("none", 0.0, {2048: 0.0, 4096: 0.0}) + rows_of("dash", 0.5, {2048: 0.1, 4096: 0.1})
    repeat = rows_of("none", 0.0, {2048: 0.0, 4096: 0.0})
    assert "| 16 prompts |" in paired_tables.pooled_table(rows + repeat, "edit_similarity")
    other = [{**row, "scores": row["scores"][:4], "n": 4} for row in rows_of("dash", 0.5, {2048: 0.0, 4096: 0.0})]
    older = [{key: value for key, value in row.items() if key != "scores"} for row in repeat]
    with pytest.raises(ValueError, match=r"dash at ratio 0.5 on lcc 2048 \(-\) comes twice with other scores \(8 and 4 "):
        paired_tables.pooled_table(rows + other, "edit_similarity")
    with pytest.raises(ValueError, match=r"none at ratio 0.0 on lcc 2048 \(-\) comes twice"):  # group means only
        paired_tables.pooled_table(rows + older, "edit_similarity")
    files = []
    for name, part in (("a", rows), ("b", other)):
        store = ResultStore(tmp_path / f"{name}.jsonl", {"model": name})
        for row in part:
            store.add({key: row[key] for key in ("method", "ratio", "task", "length")}, [row])
        files.append(str(tmp_path / f"{name}.jsonl"))
    monkeypatch.setattr(sys, "argv", ["paired_tables.py", *files, "--output", str(tmp_path / "paired.md")])
    with pytest.raises(SystemExit) as exit_info:
        paired_tables.main()
    assert exit_info.value.code == 2
    assert "table them apart" in capsys.readouterr().err
    assert not (tmp_path / "paired.md").exists()

"""``eval/sweep_vl.py``'s report step on what a sweep can leave: rows of the unmodified model only."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "eval"))
import sweep_vl  # noqa: E402

sys.path.pop(0)


class Rows:
    """The two calls ``report`` makes on a :class:`dash_vl.suites.sweep.ResultStore`."""

    def __init__(self, rows: list[dict]) -> None:
        self._rows = rows

    def rows(self) -> list[dict]:
        return [dict(row) for row in self._rows]

    def write_csv(self, path: str) -> None:
        Path(path).write_text("task,method\n")


def test_report_of_ratio_zero_cells_only_writes_the_table_and_no_plots(tmp_path, capsys):
    unmodified = dict(task="dash_shapes", method=sweep_vl.UNMODIFIED, ratio=0.0, scope="-", score=0.5, relative_flops=1.0)
    results = tmp_path / "sweep.jsonl"
    sweep_vl.report(Rows([unmodified]), str(results), "tiny")
    assert "0.500 (1.00)" in (tmp_path / "sweep.md").read_text()
    assert not list(tmp_path.glob("*.png"))
    assert "no plots" in capsys.readouterr().err

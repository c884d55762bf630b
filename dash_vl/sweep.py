"""Resumable sweeps: tidy result rows kept in a JSON-lines file, one cell at a time.

A cell is a dict of the settings that identify it (method, ratio, task, ...). Its rows are
appended (and flushed) when it finishes, so an interrupted sweep restarted with the same file
skips the finished cells.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm import tqdm

Cell = dict[str, object]
Row = dict[str, object]


def cell_key(cell: Cell) -> str:
    """A canonical string for ``cell`` (its items sorted, as JSON)."""
    return json.dumps(cell, sort_keys=True)


class ResultStore:
    """Rows of a sweep in the JSON-lines file ``path``; each row carries its cell's settings
    under ``"cell"`` and its measurements beside them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[Row] = []
        if self.path.exists():
            with self.path.open() as handle:
                self._rows = [json.loads(line) for line in handle if line.strip()]
        self._done = {cell_key(row["cell"]) for row in self._rows}

    def has(self, cell: Cell) -> bool:
        return cell_key(cell) in self._done

    def add(self, cell: Cell, rows: Sequence[Row]) -> None:
        """Append ``cell``'s ``rows`` (at least one) and mark the cell finished."""
        if not rows:
            raise ValueError(f"cell {cell_key(cell)} produced no rows")
        tagged = [{"cell": dict(cell), **row} for row in rows]
        with self.path.open("a") as handle:
            for row in tagged:
                handle.write(json.dumps(row) + "\n")
        self._rows.extend(tagged)
        self._done.add(cell_key(cell))

    def rows(self) -> list[Row]:
        """Every row, with the cell's settings flattened beside the measurements."""
        return [{**row["cell"], **{k: v for k, v in row.items() if k != "cell"}} for row in self._rows]

    def write_csv(self, path: str | Path) -> None:
        """The flattened rows as a CSV (columns: the union of the rows' keys, in first-seen order)."""
        rows = self.rows()
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with Path(path).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def run_sweep(
    cells: Sequence[Cell], measure: Callable[[Cell], Sequence[Row]], store: ResultStore, description: str = "sweep"
) -> int:
    """Measure every cell not yet in ``store``, with a progress bar; returns how many ran."""
    pending = [cell for cell in cells if not store.has(cell)]
    for cell in tqdm(pending, desc=description, unit="cell"):
        store.add(cell, measure(cell))
    return len(pending)


def pooled(rows: Sequence[dict], by: Sequence[str], score: str, cost: str) -> dict[tuple, tuple[float, float]]:
    """Per ``by`` value tuple: (``cost`` mean, ``score`` mean), both weighted by each row's ``n``."""
    sums: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for row in rows:
        entry = sums[tuple(row[key] for key in by)]
        entry[0] += row[cost] * row["n"]
        entry[1] += row[score] * row["n"]
        entry[2] += row["n"]
    return {key: (c / n, s / n) for key, (c, s, n) in sums.items()}

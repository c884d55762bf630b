"""Resumable sweeps: tidy result rows kept in a JSON-lines file, one cell at a time.

A cell is a dict of the settings that identify it (method, ratio, task, ...). The file's first line is
its header: everything else that changes a result (the model and a fingerprint of its weights, the
task's size, the fixed knobs, the versions of torch, transformers and dash_vl; :func:`sweep_header`).
A file written under another header is refused, never merged. Each cell's rows are appended when the
cell finishes, one line each, flushed and synced to disk; on resume the finished cells are skipped, and a
torn last line or a cell cut short by a kill is dropped with a warning (and measured again). Every line
is strict JSON: an undefined measurement (a NaN) is written as ``null``. Ctrl-C stops the sweep with
one line saying how to resume (exit code 130).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

Cell = dict[str, object]
Row = dict[str, object]
HEADER = "header"
CELL_ROWS = "cell_rows"
"""Stored beside each row: how many rows its cell wrote (a cell with fewer on disk was cut short)."""


def cell_key(cell: Cell) -> str:
    """A canonical string for ``cell`` (its items sorted, as JSON)."""
    return json.dumps(strict_json(cell), sort_keys=True)


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(key): strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def versions() -> dict[str, str]:
    """The versions that change a measurement: Python, torch, transformers, dash_vl."""
    import torch
    import transformers

    from dash_vl.version import __version__

    return dict(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__, dash_vl=__version__)


def weights_fingerprint(model: Any, values_per_tensor: int = 64) -> str:
    """A short hash of a model's weights: every parameter's and buffer's name, shape and dtype, and its
    first and last ``values_per_tensor`` values (so another checkpoint of the same architecture differs)."""
    import torch

    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            flat = tensor.detach().flatten()
            sample = torch.cat([flat[:values_per_tensor], flat[-values_per_tensor:]]).float().cpu()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def sweep_header(model: str, weights: str, **settings: Any) -> dict[str, Any]:
    """The header of a results file: the model (name or path), its :func:`weights_fingerprint`, every
    other setting that changes a result, and :func:`versions`."""
    return strict_json(dict(model=str(model), weights=weights, **settings, versions=versions()))


def flattened(record: Row) -> Row:
    """A stored row with its cell's settings beside its measurements (the bookkeeping left out)."""
    return {**record["cell"], **{key: value for key, value in record.items() if key not in ("cell", CELL_ROWS)}}


def stored_rows(path: str | Path) -> list[Row]:
    """Every row of the finished results file ``path``, :func:`flattened`, for reading only: its header line is
    skipped (files of older dash_vl have none), any header is accepted, and the file is never written.

    Raises:
        ValueError: where a line is not JSON.
    """
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path} line {number} is not JSON") from None
        if HEADER not in record:
            rows.append(flattened(record))
    return rows


class ResultStore:
    """Rows of a sweep in the JSON-lines file ``path`` under ``header``; each row carries its cell's
    settings under ``"cell"`` and its measurements beside them.

    Raises:
        ValueError: if ``path`` holds the results of another header (or has none).
    """

    def __init__(self, path: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.header = strict_json(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rows: list[Row] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            self._read()
        else:
            self._append([{HEADER: self.header}])
        self._done = {cell_key(row["cell"]) for row in self._rows}

    def _read(self) -> None:
        """Load the rows, refusing another header; drop a torn last line and cut-short cells (rewriting the file)."""
        text = self.path.read_text()
        lines = text.splitlines()
        records, dropped = [], []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{self.path} line {number} is not JSON; the file is damaged: use another --results file") from None
                dropped.append(f"the torn last line {number} (a run killed while writing)")
        found = records[0].get(HEADER) if records and isinstance(records[0], dict) else None
        if found is None:
            raise ValueError(
                f"{self.path} has no header line (written by an older dash_vl or another tool); use another --results file"
            )
        if found != self.header:
            raise ValueError(f"{self.path} holds results of another configuration ({differences(found, self.header)}); "
                             "use another --results file, or delete it to start over")
        groups: dict[str, list[Row]] = defaultdict(list)
        for row in records[1:]:
            groups[cell_key(row["cell"])].append(row)
        for key, rows in groups.items():
            if len(rows) != rows[0].get(CELL_ROWS, len(rows)):
                dropped.append(f"{len(rows)} of {rows[0][CELL_ROWS]} rows of the cut-short cell {key}")
                continue
            self._rows.extend(rows)
        if dropped:
            warnings.warn(f"{self.path}: dropped {'; '.join(dropped)}; those cells run again", stacklevel=3)
        if dropped or not text.endswith("\n"):
            self._rewrite()

    def _rewrite(self) -> None:
        """Replace the file by its header and the kept rows (written beside it, then renamed over it)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w") as handle:
            for record in [{HEADER: self.header}, *self._rows]:
                handle.write(json.dumps(record, allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def _append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append one line per record, each flushed and synced to disk."""
        with self.path.open("a") as handle:
            for record in records:
                handle.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def has(self, cell: Cell) -> bool:
        return cell_key(cell) in self._done

    def add(self, cell: Cell, rows: Sequence[Row]) -> None:
        """Append ``cell``'s ``rows`` (at least one) and mark the cell finished."""
        if not rows:
            raise ValueError(f"cell {cell_key(cell)} produced no rows")
        tagged = [strict_json({"cell": dict(cell), **row, CELL_ROWS: len(rows)}) for row in rows]
        self._append(tagged)
        self._rows.extend(tagged)
        self._done.add(cell_key(cell))

    def rows(self) -> list[Row]:
        """Every row, with the cell's settings flattened beside the measurements."""
        return [flattened(row) for row in self._rows]

    def write_csv(self, path: str | Path) -> None:
        """The flattened rows as a CSV (columns: the union of the rows' keys, in first-seen order)."""
        rows = self.rows()
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with Path(path).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def differences(found: Mapping[str, Any], wanted: Mapping[str, Any], prefix: str = "") -> str:
    """``"model: a -> b; limit: 8 -> 16"``: the header entries that differ (nested ones by dotted name)."""
    parts = []
    for key in dict.fromkeys([*found, *wanted]):
        old, new = found.get(key), wanted.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            inner = differences(old, new, f"{prefix}{key}.")
            parts += [inner] if inner else []
        elif old != new:
            parts.append(f"{prefix}{key}: {old} -> {new}")
    return "; ".join(parts)


def run_sweep(
    cells: Sequence[Cell], measure: Callable[[Cell], Sequence[Row]], store: ResultStore, description: str = "sweep"
) -> int:
    """Measure every cell not yet in ``store``, with a progress bar; returns how many ran.

    On Ctrl-C the finished cells stay in the file, one line says how to resume, and the process exits
    with code 130; when the GPU runs out of memory, likewise with code 1 (no traceback either way).
    """
    import torch

    pending = [cell for cell in cells if not store.has(cell)]

    def stop(what: str, code: int) -> SystemExit:
        done = sum(store.has(cell) for cell in pending)
        print(
            f"\n{description}: {what}; {done} of {len(pending)} pending cells finished and saved in {store.path}; "
            "rerun the same command to resume", file=sys.stderr,
        )
        return SystemExit(code)

    try:
        for cell in tqdm(pending, desc=description, unit="cell"):
            store.add(cell, measure(cell))
    except KeyboardInterrupt:
        raise stop("interrupted", 130) from None
    except torch.OutOfMemoryError as error:
        first_line = str(error).split(". ")[0]
        raise stop(f"out of GPU memory in cell {cell} ({first_line}): free the GPU or use smaller batches", 1) from None
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

"""Write a :class:`dash_vl.diagnosis.run.Diagnosis`: ``<stem>.json`` (every number), ``<stem>.csv`` (the
same numbers, one per row) and, optionally, ``<stem>_convergence.png`` and ``<stem>_redundancy.png``;
read one back from its JSON (to plot it again without running the model)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from dash_vl.diagnosis.config import DiagnosisConfig
from dash_vl.diagnosis.run import Diagnosis
from dash_vl.diagnosis.stats import (
    HaltedShare,
    LaterLayerAttention,
    LayerConvergence,
    LayerModality,
    Redundancy,
    Sink,
    SinkDecision,
)

CSV_COLUMNS: tuple[str, ...] = ("section", "start_layer", "layer", "group", "statistic", "value")


def table_rows(diagnosis: Diagnosis) -> Iterator[dict[str, Any]]:
    """The diagnosis's numbers in long form, one dict of :data:`CSV_COLUMNS` per number."""

    def row(section: str, statistic: str, value: Any, start_layer: Any = "", layer: Any = "", group: Any = "") -> dict:
        return dict(section=section, start_layer=start_layer, layer=layer, group=group, statistic=statistic, value=value)

    for entry in diagnosis.convergence:
        for name, value in asdict(entry).items():
            if name != "layer":
                yield row("convergence", name, value, layer=entry.layer)
    for result in diagnosis.redundancy:
        yield row("redundancy", "lowest_group_relative", result.lowest_group_relative, start_layer=result.start_layer)
        for view, share in result.halted.items():
            yield row("redundancy", "holds", result.holds[view], result.start_layer, group=view)
            yield row("redundancy", "halted_share_dash", share.dash, result.start_layer, group=view)
            yield row("redundancy", "halted_share_random", share.random, result.start_layer, group=view)
            yield row("redundancy", "share_ratio", result.share_ratio[view], result.start_layer, group=view)
            low, high = result.share_ratio_interval[view]
            yield row("redundancy", "share_ratio_low", low, result.start_layer, group=view)
            yield row("redundancy", "share_ratio_high", high, result.start_layer, group=view)
            yield row("redundancy", "interval_verdict", result.interval_verdict[view], result.start_layer, group=view)
        for layer in result.layers:
            for group, value in enumerate(layer.decile_relative, start=1):
                yield row("redundancy", "group_relative", value, result.start_layer, layer.layer, group)
            for name in ("random_low", "random_high"):
                yield row("redundancy", name, getattr(layer, name), result.start_layer, layer.layer)
            for view, share in layer.halted.items():
                yield row("redundancy", "halted_share_dash", share.dash, result.start_layer, layer.layer, view)
                yield row("redundancy", "halted_share_random", share.random, result.start_layer, layer.layer, view)
    for entry in diagnosis.modality or ():
        yield row("modality", "median_relative_update", entry.visual_median_relative_update, layer=entry.layer, group="visual")
        yield row("modality", "median_relative_update", entry.text_median_relative_update, layer=entry.layer, group="text")
    for sink in diagnosis.sinks:
        token = f"prompt {sink.prompt} position {sink.position}"
        for field in fields(sink):
            if field.name not in ("prompt", "position", "decisions"):
                yield row("sinks", field.name, getattr(sink, field.name), group=token)
        for decision in sink.decisions:
            yield row("sinks", "rank", "" if decision.rank is None else decision.rank, decision.start_layer, group=token)
            yield row("sinks", "halted_by_dash", decision.halted, decision.start_layer, group=token)


def write_diagnosis(diagnosis: Diagnosis, directory: str | Path, stem: str = "diagnose", plots: bool = True) -> list[Path]:
    """Write the files into ``directory`` (created if missing); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = directory / f"{stem}.json", directory / f"{stem}.csv"
    json_path.write_text(json.dumps(diagnosis.to_dict(), indent=1) + "\n")
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(table_rows(diagnosis))
    written = [json_path, csv_path]
    if plots:
        from dash_vl.diagnosis.plots import plot_convergence, plot_redundancy

        written += [directory / f"{stem}_convergence.png", directory / f"{stem}_redundancy.png"]
        plot_convergence(diagnosis, written[2])
        plot_redundancy(diagnosis, written[3])
    return written


def read_diagnosis(path: str | Path) -> Diagnosis:
    """The :class:`Diagnosis` a ``<stem>.json`` of :func:`write_diagnosis` holds."""
    data = json.loads(Path(path).read_text())

    def shares(halted: dict) -> dict[str, HaltedShare]:
        return {view: HaltedShare(**share) for view, share in halted.items()}

    def later(layer: dict) -> LaterLayerAttention:
        return LaterLayerAttention(**dict(layer, halted=shares(layer["halted"])))

    return Diagnosis(**dict(
        data,
        config=DiagnosisConfig(**data["config"]),
        convergence=[LayerConvergence(**row) for row in data["convergence"]],
        redundancy=[
            Redundancy(**dict(entry, halted=shares(entry["halted"]), layers=[later(layer) for layer in entry["layers"]]))
            for entry in data["redundancy"]
        ],
        modality=None if data["modality"] is None else [LayerModality(**row) for row in data["modality"]],
        sinks=[Sink(**dict(sink, decisions=[SinkDecision(**d) for d in sink["decisions"]])) for sink in data["sinks"]],
    ))

"""PNG plots of a :class:`dash_vl.diagnosis.run.Diagnosis` (matplotlib: ``pip install 'dash-vl[accuracy]'``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dash_vl.diagnosis.run import Diagnosis
from dash_vl.diagnosis.stats import ATTENTION_VIEWS

PANELS_PER_ROW = 5


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend.

    Raises:
        ImportError: without matplotlib, naming the extra that brings it.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the diagnosis plots need matplotlib: pip install 'dash-vl[accuracy]' (or pass plots=False)") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_convergence(diagnosis: Diagnosis, path: Path) -> None:
    """Per layer: median ``Δattn``, share near zero, skewness, median ``Δattn / ‖h‖``, median ``‖h‖``,
    and the visual and text medians of ``Δattn / ‖h‖`` where the prompts hold both."""
    plt = pyplot()
    rows = diagnosis.convergence
    layers = [row.layer for row in rows]
    panels = [
        ("median_delta_attn", "median Δattn = ‖U‖"),
        ("share_near_zero", f"share of tokens below {diagnosis.config.small_fraction:g} × layer max"),
        ("skewness", "skewness of Δattn"),
        ("median_relative_update", "median Δattn / ‖h‖"),
        ("median_hidden_norm", "median ‖h‖"),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for axis, (name, title) in zip(axes.flat, panels):
        axis.plot(layers, [getattr(row, name) for row in rows], marker="o")
        axis.set_title(title, fontsize=9)
    modality_axis = axes.flat[5]
    if diagnosis.modality is not None:
        for name, label in (("visual_median_relative_update", "visual"), ("text_median_relative_update", "text")):
            modality_axis.plot(layers, [getattr(row, name) for row in diagnosis.modality], marker="o", label=label)
        modality_axis.legend(fontsize=8)
        modality_axis.set_title("median Δattn / ‖h‖ by modality", fontsize=9)
    else:
        modality_axis.set_axis_off()
    for axis in axes.flat[:5]:
        axis.set_xlabel("layer")
        axis.grid(alpha=0.3)
    figure.suptitle(f"{diagnosis.model}: do tokens converge? ({len(diagnosis.prompt_tokens)} prompts)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_redundancy(diagnosis: Diagnosis, path: Path) -> None:
    """First panel: per candidate ``l_s``, the attention later layers give DASH's halted tokens over a
    random set's (each attention view). Then one panel per ``l_s``: relative attention received per ``Δattn`` group (mean
    over later layers) with the random groups' 5–95 % band."""
    plt = pyplot()
    results = diagnosis.redundancy
    columns = min(PANELS_PER_ROW, len(results) + 1)
    rows = math.ceil((len(results) + 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.6 * rows), squeeze=False)
    panels = list(axes.flat)
    summary = panels[0]
    for view in ATTENTION_VIEWS:
        summary.plot(
            [r.start_layer for r in results], [r.share_ratio[view] for r in results], marker="o", label=view.replace("_", " ")
        )
    summary.axhline(1.0, color="black", linewidth=1)
    summary.axhline(1 - diagnosis.config.margin, color="grey", linestyle="--", linewidth=1, label="verdict threshold")
    summary.set_xlabel("decision layer l_s")
    summary.set_title(f"DASH / random halted share at ρ={diagnosis.config.ratio}", fontsize=9)
    summary.legend(fontsize=7)
    summary.grid(alpha=0.3)
    groups = list(range(1, diagnosis.config.groups + 1))
    for axis, result in zip(panels[1:], results):
        relative = [sum(layer.decile_relative[g - 1] for layer in result.layers) / len(result.layers) for g in groups]
        low = sum(layer.random_low for layer in result.layers) / len(result.layers)
        high = sum(layer.random_high for layer in result.layers) / len(result.layers)
        axis.axhspan(low, high, color="grey", alpha=0.3, label="random groups 5–95 %")
        axis.plot(groups, relative, marker="o", label="Δattn rank groups")
        axis.axhline(1.0, color="black", linewidth=1)
        axis.set_title(f"l_s = {result.start_layer}: layers {result.start_layer + 1}–{diagnosis.num_layers - 1}", fontsize=9)
        axis.set_xlabel("Δattn group at l_s (1 = lowest)")
        axis.set_ylabel("received / eligible mean", fontsize=8)
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    for axis in panels[len(results) + 1 :]:
        axis.set_axis_off()
    figure.suptitle(f"{diagnosis.model}: does stability imply redundancy? ({len(diagnosis.prompt_tokens)} prompts)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

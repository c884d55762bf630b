"""Plots of sweep rows (matplotlib, PNG): score against ratio, and score against cost."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dash_vl.suites.sweep import pooled  # noqa: E402


def plot_lines(
    rows: Sequence[dict], x: str, y: str, line: str, panel: str, path: str, title: str,
    point: str = "ratio", reference: float | None = None,
) -> None:
    """One panel per value of ``panel``, one line per value of ``line``, one point per value of
    ``point``: ``y`` (a score) against ``x`` (a setting or a cost), both pooled over the rows
    sharing those values; ``reference`` (the unmodified model's score) as a dashed line."""
    panels = sorted({row[panel] for row in rows})
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False, sharey=True)
    points = pooled(rows, (panel, line, point), y, x)
    palette = plt.get_cmap("tab20").colors
    colours = {value: palette[i % len(palette)] for i, value in enumerate(sorted({key[1] for key in points}, key=str))}
    for axis, panel_value in zip(axes[0], panels):
        for line_value in sorted({key[1] for key in points if key[0] == panel_value}, key=str):
            curve = sorted((value for key, value in points.items() if key[:2] == (panel_value, line_value)))
            axis.plot(
                [c for c, _ in curve], [s for _, s in curve], marker="o", color=colours[line_value], label=str(line_value)
            )
        if reference is not None:
            axis.axhline(reference, color="black", linestyle="--", linewidth=1, label="unmodified")
        axis.set_title(f"{panel} = {panel_value}")
        axis.set_xlabel(x.replace("_", " "))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel(y.replace("_", " "))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

"""Report plots rendered to PNG bytes with matplotlib's Agg canvas.

Figures are built with :class:`matplotlib.figure.Figure` and :class:`FigureCanvasAgg` directly,
never through ``pyplot``: no global backend state, no display needed, safe in threads and in a
notebook that uses another backend. Every function returns PNG bytes (or a list of them).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from oodpl.cli.report.results import (
    AccuracyMatrix,
    Calibration,
    GoldVsTemperature,
    RewardDifferences,
)

DPI = 100
CURVES_PER_FIGURE = 9
_RESERVED_KEYS = {"step", "time", "epoch", "phase"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def accuracy_heatmap(matrix: AccuracyMatrix) -> bytes:
    """Heatmap of accuracy, trained-on domains (rows) x evaluated-on domains (columns).

    Cells are annotated with the value; in-distribution cells (same row and column name) are
    outlined; missing values (null) are left blank.
    """
    values = np.array(
        [[np.nan if v is None else v for v in row] for row in matrix.values], dtype=float
    )
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(1.1 * n_cols + 2.8, 0.7 * n_rows + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n_cols), labels=matrix.eval_domains, rotation=35, ha="right")
    ax.set_yticks(range(n_rows), labels=matrix.train_domains)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    ax.set_title(matrix.title)
    for i in range(n_rows):
        for j in range(n_cols):
            if not np.isnan(values[i, j]):
                color = "black" if values[i, j] > 0.6 else "white"
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", color=color)
            if matrix.train_domains[i] == matrix.eval_domains[j]:
                ax.add_patch(
                    Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)
                )
    fig.colorbar(image, ax=ax, label=matrix.metric)
    return _png(fig)


def reliability_diagram(calibration: Calibration) -> bytes:
    """One reliability diagram per domain: bin accuracy vs confidence, the gap shaded in red."""
    names = list(calibration.domains)
    n_rows, n_cols = _grid(len(names))
    fig = Figure(figsize=(3.6 * n_cols, 3.5 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    fig.subplots_adjust(wspace=0.35, hspace=0.45)
    for index, ax in enumerate(axes.flat):
        if index >= len(names):
            ax.set_visible(False)
            continue
        name = names[index]
        domain = calibration.domains[name]
        filled = [b for b in domain.bins if b.count > 0 and b.accuracy is not None]
        centers = [(b.lower + b.upper) / 2 for b in filled]
        widths = [b.upper - b.lower for b in filled]
        accuracy = [b.accuracy for b in filled]
        confidence = [
            b.confidence if b.confidence is not None else c
            for b, c in zip(filled, centers, strict=True)
        ]
        ax.bar(
            centers, accuracy, width=widths, color="#4c72b0", edgecolor="black", label="accuracy"
        )
        ax.bar(
            centers,
            np.subtract(confidence, accuracy),
            bottom=accuracy,
            width=widths,
            color="#dd8452",
            alpha=0.45,
            edgecolor="#c44e52",
            hatch="//",
            label="gap",
        )
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name}  ECE={domain.ece:.3f}", fontsize=10)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        if index == 0:
            ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(calibration.title, y=1.0 + 0.3 / (3.5 * n_rows))  # above the panel titles
    return _png(fig)


def reward_difference_boxplot(differences: RewardDifferences) -> bytes:
    """Box plots of d = r_w − r_l per group; whiskers at the Tukey fences (1.5·IQR), mean marked."""
    names = list(differences.groups)
    fig = Figure(figsize=(max(4.0, 1.2 * len(names) + 2.0), 4.0))
    ax = fig.add_subplot()
    ax.boxplot([differences.groups[n] for n in names], whis=1.5, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), labels=names, rotation=20, ha="right")
    ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
    ax.set_ylabel(differences.metric)
    ax.set_title(differences.title)
    return _png(fig)


def gold_reward_vs_temperature(result: GoldVsTemperature) -> bytes:
    """Median gold reward per temperature for each method, min–max over repetitions shaded."""
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    for method, by_temperature in result.methods.items():
        temps = list(by_temperature)
        samples = [np.asarray(by_temperature[t], dtype=float) for t in temps]
        medians = [float(np.median(s)) for s in samples]
        (line,) = ax.plot(temps, medians, marker="o", label=method)
        ax.fill_between(
            temps,
            [float(s.min()) for s in samples],
            [float(s.max()) for s in samples],
            color=line.get_color(),
            alpha=0.2,
        )
    ax.set_xlabel("temperature")
    ax.set_ylabel(f"{result.metric} (median, min–max)")
    ax.set_title(result.title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def curve_series(
    records: Sequence[Mapping[str, Any]],
) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """metric -> phase -> (steps, values) from metrics.jsonl records (numbers only)."""
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for position, record in enumerate(records):
        step = record.get("step", position)
        phase = str(record.get("phase", "train"))
        for key, value in record.items():
            if key in _RESERVED_KEYS or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                steps, values = series.setdefault(key, {}).setdefault(phase, ([], []))
                steps.append(float(step))
                values.append(float(value))
    return series


def training_curves(records: Sequence[Mapping[str, Any]]) -> list[tuple[list[str], bytes]]:
    """Training curves, one panel per metric (a line per phase), at most 9 panels per figure.

    Returns ``[(metric names in the figure, png bytes), ...]``; empty when nothing was logged.
    """
    series = curve_series(records)
    names = list(series)
    figures = []
    for start in range(0, len(names), CURVES_PER_FIGURE):
        chunk = names[start : start + CURVES_PER_FIGURE]
        n_rows, n_cols = _grid(len(chunk))
        fig = Figure(figsize=(3.8 * n_cols, 3.0 * n_rows))
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        fig.subplots_adjust(wspace=0.35, hspace=0.55)
        for index, ax in enumerate(axes.flat):
            if index >= len(chunk):
                ax.set_visible(False)
                continue
            for phase, (steps, values) in series[chunk[index]].items():
                style = "-" if len(steps) > 1 else "o"
                ax.plot(steps, values, style, label=phase, linewidth=1.4)
            ax.set_title(chunk[index], fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if len(series[chunk[index]]) > 1:
                ax.legend(fontsize=8)
        figures.append((chunk, _png(fig)))
    return figures

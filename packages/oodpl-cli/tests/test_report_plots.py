"""Report plots: valid, non-blank PNGs that change with the data; edge cases of the inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from oodpl.cli.report import plots
from oodpl.cli.report.results import (
    AccuracyMatrix,
    Calibration,
    CalibrationBin,
    DomainCalibration,
    GoldVsTemperature,
    RewardDifferences,
)


def decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def assert_not_blank(png: bytes, min_colours: int = 20, min_ink: float = 0.02) -> np.ndarray:
    pixels = decode(png)
    height, width, _ = pixels.shape
    assert height > 150 and width > 150
    packed = pixels.astype(np.uint32)
    colours = np.unique((packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2])
    ink = float((pixels.min(axis=2) < 235).mean())  # share of clearly non-white pixels
    assert len(colours) >= min_colours and ink >= min_ink, (len(colours), ink)
    return pixels


def test_every_plot_of_the_sample_is_a_non_blank_png(samples: dict) -> None:
    assert_not_blank(plots.accuracy_heatmap(samples["ood_accuracy"]), min_ink=0.2)
    assert_not_blank(plots.reliability_diagram(samples["calibration"]), min_ink=0.1)
    assert_not_blank(plots.reward_difference_boxplot(samples["reward_diff"]))
    assert_not_blank(plots.gold_reward_vs_temperature(samples["gold"]))


def test_heatmap_changes_with_the_values() -> None:
    def matrix(v: float) -> AccuracyMatrix:
        return AccuracyMatrix(
            title="m", train_domains=["a", "b"], eval_domains=["a", "b"], values=[[v, 0.5]] * 2
        )

    low, high = (
        decode(plots.accuracy_heatmap(matrix(0.1))),
        decode(plots.accuracy_heatmap(matrix(0.9))),
    )
    assert low.shape == high.shape and (low != high).any()


def test_heatmap_with_missing_values_and_no_diagonal() -> None:
    result = AccuracyMatrix(
        title="m",
        train_domains=["UltraFeedback"],
        eval_domains=["HH", "Arena"],
        values=[[None, 0.7]],
    )
    assert_not_blank(plots.accuracy_heatmap(result), min_colours=10)


def test_reliability_diagram_with_empty_bins_and_many_domains() -> None:
    bins = [CalibrationBin(i / 5, (i + 1) / 5, 0, None, None) for i in range(5)]
    bins[2] = CalibrationBin(0.4, 0.6, 10, 0.5, 0.4)
    domains = {f"d{i}": DomainCalibration(0.1, None, None, None, bins) for i in range(5)}
    png = plots.reliability_diagram(Calibration(title="c", n_bins=5, domains=domains))
    pixels = assert_not_blank(png)
    assert pixels.shape[0] > pixels.shape[1] * 0.5  # two rows of panels


def test_boxplot_and_gold_plot_accept_single_values() -> None:
    assert_not_blank(
        plots.reward_difference_boxplot(RewardDifferences(title="r", groups={"only": [0.3]})),
        min_ink=0.01,
    )
    gold = GoldVsTemperature(title="g", methods={"m": {1.0: [0.5]}})
    assert_not_blank(plots.gold_reward_vs_temperature(gold), min_ink=0.01)


def test_curve_series_groups_numbers_by_metric_and_phase() -> None:
    records = [
        {"step": 0, "phase": "train", "time": 1.0, "loss": 1.0, "flag": True, "note": "x"},
        {"step": 5, "phase": "train", "time": 2.0, "loss": 0.5},
        {"step": 5, "phase": "eval", "time": 3.0, "loss": 0.8, "epoch": 0.5},
        {"loss": 0.4},  # no step: its position is used
    ]
    series = plots.curve_series(records)
    assert set(series) == {"loss"}
    assert series["loss"]["train"] == ([0.0, 5.0, 3.0], [1.0, 0.5, 0.4])
    assert series["loss"]["eval"] == ([5.0], [0.8])


@pytest.mark.parametrize(("n_metrics", "n_figures"), [(0, 0), (1, 1), (9, 1), (10, 2)])
def test_training_curves_split_into_figures_of_nine_panels(n_metrics: int, n_figures: int) -> None:
    records = [{"step": s, **{f"m{i}": s * i for i in range(n_metrics)}} for s in range(3)]
    figures = plots.training_curves(records)
    assert len(figures) == n_figures
    assert [name for names, _ in figures for name in names] == [f"m{i}" for i in range(n_metrics)]
    for _, png in figures:
        assert_not_blank(png, min_ink=0.01)

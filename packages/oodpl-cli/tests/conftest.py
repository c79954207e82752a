"""Shared fixtures of the oodpl-cli tests: a complete sample run directory and a CLI runner."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from oodpl.cli.config import config_from_dict
from oodpl.cli.report.builder import build_document, write_report
from oodpl.cli.report.document import Document
from oodpl.cli.report.results import (
    AccuracyMatrix,
    Calibration,
    CalibrationBin,
    DomainCalibration,
    GoldVsTemperature,
    MetricTable,
    RewardDifferences,
    Summary,
    SummaryRow,
)
from oodpl.cli.run_dir import RunDir

DOMAINS = ["book", "dvd", "electronics", "kitchen"]


def calibration_bins(rng: random.Random, n_bins: int = 10) -> list[CalibrationBin]:
    """Reliability bins of a slightly over-confident model."""
    bins = []
    for i in range(n_bins):
        lower, upper = i / n_bins, (i + 1) / n_bins
        count = rng.randint(0, 40) if i in (0, n_bins - 1) else rng.randint(5, 40)
        confidence = (lower + upper) / 2 if count else None
        accuracy = min(1.0, max(0.0, 0.5 + 0.8 * (confidence - 0.5))) if count else None
        bins.append(CalibrationBin(lower, upper, count, confidence, accuracy))
    return bins


def sample_results(seed: int = 0) -> dict[str, object]:
    """One result of every section type, as the pipelines would write them."""
    rng = random.Random(seed)
    values = [
        [round(0.85 if i == j else 0.6 + 0.2 * rng.random(), 4) for j in range(len(DOMAINS))]
        for i in range(len(DOMAINS))
    ]
    values[1][3] = None  # a missing cell
    return {
        "00-summary": Summary(
            title="Key results",
            rows=[
                SummaryRow("pl_accuracy", 0.7312, 0.012, "mean of 3 seeds"),
                SummaryRow("ece", 0.0412),
                SummaryRow("test_domain", "kitchen", note="held out"),
            ],
            order=0,
        ),
        "ood_accuracy": AccuracyMatrix(
            title="OOD accuracy",
            description="Leave-one-domain-out preference accuracy of the explicit RM.",
            train_domains=DOMAINS,
            eval_domains=DOMAINS,
            values=values,
        ),
        "pl_accuracy": MetricTable(
            title="PL accuracy on the test domain",
            metric="pl_accuracy",
            columns=DOMAINS,
            rows={m: [round(0.6 + 0.1 * rng.random(), 4) for _ in DOMAINS] for m in ("SFT", "HPL")}
            | {"OODPL": [0.8, 0.79, None, 0.81]},
            std={"HPL": [0.01, 0.02, 0.01, 0.03]},
        ),
        "calibration": Calibration(
            title="Calibration",
            domains={
                d: DomainCalibration(
                    ece=0.03 + 0.01 * k,
                    ace=0.04,
                    mce=0.1,
                    brier=None,
                    bins=calibration_bins(rng),
                )
                for k, d in enumerate(DOMAINS[:3])
            },
        ),
        "reward_diff": RewardDifferences(
            title="Reward differences",
            groups={
                name: [rng.gauss(mu, 1.0) for _ in range(200)] + [8.0, -7.5]
                for name, mu in (("MultiTask", 0.5), ("MORE", 0.9))
            },
            stats={"MORE": {"n_positive_outliers": 1, "mean_positive_outlier": 8.0}},
        ),
        "gold": GoldVsTemperature(
            title="Gold reward versus temperature",
            methods={
                method: {
                    t: [1.0 + shift - 0.5 * t + 0.05 * rng.random() for _ in range(3)]
                    for t in (0.25, 0.5, 0.75, 1.0)
                }
                for method, shift in (("SFT", 0.0), ("OODPL", 0.4))
            },
        ),
    }


def make_sample_run(root: Path, name: str = "sample", *, with_results: bool = True) -> RunDir:
    """A complete run directory: config, env, metrics, results."""
    config = config_from_dict(
        {"kind": "dpo", "name": name, "output_dir": str(root), "notes": "sample run"}
    )
    run = RunDir.start(config, command=["oodpl", "train", "cfg.yaml"])
    for step in range(0, 60, 5):
        run.log_metrics(step, {"loss": 0.7 * math.exp(-step / 30) + 0.05, "lr": 1e-4})
        if step % 20 == 0:
            run.log_metrics(step, {"loss": 0.75 * math.exp(-step / 40) + 0.1}, phase="eval")
    if with_results:
        for result_name, result in sample_results().items():
            run.write_result(result_name, result)
    return run


@pytest.fixture
def sample_run(tmp_path: Path) -> RunDir:
    return make_sample_run(tmp_path / "runs")


@pytest.fixture(scope="session")
def reported_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunDir, Document]:
    """A sample run with its report built once per test session (read-only for tests)."""
    run = make_sample_run(tmp_path_factory.mktemp("reported"))
    document = build_document(run.path)
    write_report(run.path, document)
    return run, document


@pytest.fixture(scope="session")
def reported_run(reported_sample: tuple[RunDir, Document]) -> RunDir:
    return reported_sample[0]


@pytest.fixture(scope="session")
def sample_document(reported_sample: tuple[RunDir, Document]) -> Document:
    return reported_sample[1]


@pytest.fixture
def samples() -> dict[str, object]:
    """One result of every section type, keyed by result file name."""
    return sample_results()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()

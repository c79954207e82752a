"""Write evaluations as report sections (``results/*.json``, schema ``oodpl.results/1``).

For a list of :class:`~oodpl.cli.pipelines.evaluate.Evaluation` (e.g. the untrained and the
trained model, or several checkpoints):

- ``00-summary``: the headline metric (and every metric's ID / OOD means) per evaluation;
- ``metric-<name>``: one table per metric, rows = evaluations, columns = domains + ID / OOD means;
- ``matrix-<metric>``: the ID/OOD accuracy matrix, rows = models named by their training
  domains, columns = evaluation domains (the report derives ID accuracy, mean OOD accuracy and
  the drop when a row's name is also a column, i.e. for single-domain training);
- ``calibration-<label>``: reliability bins and ECE/ACE/MCE/Brier per domain;
- ``reward-differences``: ``d = r_w − r_l`` per evaluation and domain with Tukey-fence outliers;
- ``generation``: gold (or RM) reward of sampled generations versus temperature.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from oodpl.cli.pipelines.evaluate import LOWER_IS_BETTER, METRIC_MEANINGS, Evaluation
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

ACCURACY_METRICS = ("accuracy", "dporm_accuracy", "pl_accuracy")
MAX_DIFFERENCES = 2000
OUTLIER_STATS = (
    "n_positive_outliers",
    "mean_positive_outlier",
    "n_negative_outliers",
    "mean_negative_outlier",
    "median",
    "iqr",
)


def slug(text: str) -> str:
    """A result-file-safe name: letters, digits, '-', '_', '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "x"


def domains_label(domains: Sequence[str]) -> str:
    """Row name of a model trained on ``domains`` ("books+dvd")."""
    return "+".join(domains) or "none"


def summary_rows(evaluations: Sequence[Evaluation]) -> list[SummaryRow]:
    """Headline metric first, then the other metrics' ID/OOD means, for each evaluation."""
    rows: list[SummaryRow] = []
    for evaluation in evaluations:
        names = [evaluation.headline] + [
            m for m in evaluation.metric_names() if m not in (evaluation.headline, "ties")
        ]
        for metric in names:
            for group in ("id", "ood"):
                value = evaluation.mean(metric, group)
                if value is not None:
                    rows.append(SummaryRow(f"{metric}/{group}", value, note=evaluation.label))
    return rows


def metric_tables(evaluations: Sequence[Evaluation]) -> dict[str, MetricTable]:
    """One :class:`MetricTable` per metric: rows = evaluations, columns = domains, ID, OOD."""
    first = evaluations[0]
    domains = list(first.train_domains + first.test_domains)
    columns = [*domains, "ID mean"] + (["OOD mean"] if first.test_domains else [])
    tables = {}
    metrics = list(dict.fromkeys(m for e in evaluations for m in e.metric_names()))
    for metric in metrics:
        rows = {}
        for e in evaluations:
            values = [e.value(metric, d) for d in domains] + [e.mean(metric, "id")]
            if first.test_domains:
                values.append(e.mean(metric, "ood"))
            rows[e.label] = values
        tables[metric] = MetricTable(
            title=f"{metric} per domain",
            description=(
                f"In-distribution (trained on): {', '.join(first.train_domains)}; "
                f"out-of-distribution (held out): {', '.join(first.test_domains) or 'none'}."
            ),
            metric=metric,
            columns=columns,
            rows=rows,
            row_label="model",
            higher_is_better=metric not in LOWER_IS_BETTER,
            meanings={k: v for k, v in METRIC_MEANINGS.items() if k == metric},
            order=20,
        )
    return tables


def accuracy_matrix(rows: Sequence[tuple[str, Evaluation]], metric: str) -> AccuracyMatrix:
    """The ID/OOD matrix of ``metric``: one row per (training-domain name, evaluation)."""
    eval_domains = list(dict.fromkeys(d for _, e in rows for d in e.domains))
    return AccuracyMatrix(
        title=f"ID/OOD matrix: {metric}",
        description="Rows: the domains a model was trained on; columns: evaluation domains.",
        train_domains=[name for name, _ in rows],
        eval_domains=eval_domains,
        values=[[e.value(metric, d) for d in eval_domains] for _, e in rows],
        metric=metric,
        order=15,
    )


def calibration_section(evaluation: Evaluation, n_bins: int, binning: str) -> Calibration:
    """Per-domain reliability bins of ``σ(r_w − r_l)`` for one evaluation."""
    domains = {}
    for name, result in evaluation.domains.items():
        report = result.calibration
        bins = [
            CalibrationBin(b.lower, b.upper, b.count, b.mean_confidence, b.accuracy)
            for b in report.bins
        ]
        domains[name] = DomainCalibration(report.ece, report.ace, report.mce, report.brier, bins)
    return Calibration(
        title=f"Calibration ({evaluation.label})",
        description="p = σ(r_w − r_l) of the reward the model induces, both orientations.",
        n_bins=n_bins,
        binning=binning,
        domains=domains,
        order=30,
    )


def differences_section(evaluations: Sequence[Evaluation]) -> RewardDifferences:
    """Box plots of ``d = r_w − r_l`` per evaluation and domain, with outlier statistics."""
    groups: dict[str, list[float]] = {}
    stats: dict[str, dict[str, float]] = {}
    for e in evaluations:
        for domain, result in e.domains.items():
            name = f"{e.label}: {domain}"
            values = (result.chosen - result.rejected).tolist()
            groups[name] = values[:MAX_DIFFERENCES]
            summary = result.differences
            stats[name] = {
                key: float(getattr(summary, key))
                for key in OUTLIER_STATS
                if getattr(summary, key) is not None
            }
    return RewardDifferences(
        title="Reward differences",
        description="d = r(x, y_w) − r(x, y_l); outliers beyond the Tukey fences Q3 + 1.5·IQR "
        "and Q1 − 1.5·IQR.",
        groups=groups,
        stats=stats,
        order=40,
    )


def write_evaluations(
    run: RunDir,
    evaluations: Sequence[Evaluation],
    *,
    matrix_rows: Sequence[tuple[str, Evaluation]] = (),
    n_bins: int = 10,
    binning: str = "uniform",
    calibrate: Sequence[Evaluation] | None = None,
    extra_rows: Sequence[SummaryRow] = (),
) -> list[str]:
    """Write every section for ``evaluations`` (``extra_rows`` lead the summary); returns the
    result names written."""
    written = []
    rows = [*extra_rows, *summary_rows(evaluations)]
    if rows:
        summary = Summary(
            title="Key results",
            description="ID = mean over training domains, OOD = mean over held-out domains.",
            rows=rows,
            meanings=METRIC_MEANINGS,
            order=0,
        )
        run.write_result("00-summary", summary)
        written.append("00-summary")
    if not evaluations:
        return written
    for metric, table in metric_tables(evaluations).items():
        run.write_result(f"metric-{slug(metric)}", table)
        written.append(f"metric-{slug(metric)}")
    if matrix_rows:
        names = set(matrix_rows[0][1].metric_names())
        for metric in (m for m in ACCURACY_METRICS if m in names):
            run.write_result(f"matrix-{metric}", accuracy_matrix(matrix_rows, metric))
            written.append(f"matrix-{metric}")
    for evaluation in calibrate if calibrate is not None else evaluations[-1:]:
        name = f"calibration-{slug(evaluation.label)}"
        run.write_result(name, calibration_section(evaluation, n_bins, binning))
        written.append(name)
    run.write_result("reward-differences", differences_section(evaluations))
    written.append("reward-differences")
    return written


def write_generation(
    run: RunDir,
    scores: Mapping[str, Mapping[str, Mapping[float, list[float]]]],
    *,
    metric: str,
    scorer_name: str,
    name: str = "generation",
) -> None:
    """``scores[model][domain][temperature] = [per-repetition means]`` as one plot per domain
    group ("all" pooled), methods = models."""
    methods: dict[str, dict[float, list[float]]] = {}
    for model, by_domain in scores.items():
        pooled = by_domain.get("all") or next(iter(by_domain.values()))
        methods[model] = {float(t): list(v) for t, v in pooled.items()}
    section: Any = GoldVsTemperature(
        title=f"{metric} of sampled generations",
        description=f"Mean {scorer_name} score of one sampled response per evaluation prompt, "
        "per temperature; one value per repetition (median and range plotted).",
        methods=methods,
        metric=metric,
        meanings={k: v for k, v in METRIC_MEANINGS.items() if k == metric},
        order=50,
    )
    run.write_result(name, section)


def log_evaluation(run: RunDir | None, step: int, evaluation: Evaluation) -> None:
    """Append the evaluation's ID/OOD means to metrics.jsonl (phase "eval"); the per-domain
    values are in the results tables."""
    if run is None:
        return
    flat = {k: v for k, v in evaluation.flat().items() if not k.startswith("ties/")}
    if flat:
        run.log_metrics(step, flat, phase="eval")


__all__ = [
    "accuracy_matrix",
    "calibration_section",
    "differences_section",
    "domains_label",
    "log_evaluation",
    "metric_tables",
    "slug",
    "summary_rows",
    "write_evaluations",
    "write_generation",
]

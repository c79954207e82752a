"""Run reports: ``report.md`` + self-contained ``report.html`` built from a run directory.

``oodpl report RUN_DIR`` (or :func:`build_report`) rebuilds both files from what the run stored:
``config.yaml``, ``env.json``, ``metrics.jsonl`` (training curves), ``metric_meanings.json`` and
the structured results in ``results/*.json`` described below. Pipelines write results with
``RunDir.write_result(name, section)`` (validated before writing) using the dataclasses of
:mod:`oodpl.cli.report.results`, or any JSON matching this schema.

Results schema ``oodpl.results/1``
----------------------------------
One JSON object per file ``results/<name>.json``. Common keys::

    "schema": "oodpl.results/1"    optional; other values are refused
    "type": <section type>         required, one of the six below
    "title": str                   required; the report section heading
    "description": str             optional paragraph under the heading
    "meanings": {metric: str}      optional one-line meanings of metrics not in the glossary
    "order": int                   optional sort key (default 100; ties sorted by file name)

Numbers must be finite (NaN/Infinity are refused); ``null`` marks a missing value where noted.

``summary`` — headline numbers::

    "rows": [{"metric": "pl_accuracy", "value": 0.71, "std": 0.02, "note": "3 seeds"}, ...]
    (value: number or string; std and note optional)

``accuracy_matrix`` — OOD accuracy heatmap (rows: trained on, columns: evaluated on)::

    "metric": "preference_accuracy"          default; e.g. "exrm_accuracy", "dporm_accuracy"
    "train_domains": ["book", "dvd"]         row names
    "eval_domains": ["book", "dvd", "kitchen"]
    "values": [[0.81, 0.74, null], ...]      len(train_domains) rows of len(eval_domains), in [0, 1]
    Rows whose name is also a column get derived id_accuracy / mean_ood_accuracy / accuracy_drop.

``metric_table`` — one metric, rows (methods) x columns (domains/settings), best bolded::

    "metric": "pl_accuracy", "columns": ["book", "dvd"],
    "rows": {"HPL": [0.70, 0.68], "OODPL": [0.74, null]},
    "std": {"HPL": [0.01, 0.02]}             optional, same shape as rows
    "row_label": "method"                    optional column header
    "higher_is_better": true                 optional

``calibration`` — reliability diagrams + error table (METHODS §5)::

    "n_bins": 10, "binning": "uniform" | "quantile",
    "domains": {"book": {"ece": 0.04, "ace": 0.05, "mce": 0.12, "brier": 0.21,
                         "bins": [{"lower": 0.0, "upper": 0.1, "count": 12,
                                   "confidence": 0.06, "accuracy": 0.08}, ...]}}
    (ace, mce, brier, and the confidence/accuracy of empty bins may be null)

``reward_differences`` — box plots of d = r_w − r_l (METHODS §5)::

    "metric": "reward_difference",
    "groups": {"MORE": {"values": [0.3, -0.1, ...],
                        "stats": {"n_positive_outliers": 3, "mean_positive_outlier": 4.2}}}
    (values: the raw differences, subsample if huge; stats: optional named numbers)

``gold_vs_temperature`` — gold reward of generations versus temperature (METHODS §3)::

    "metric": "gold_reward",
    "methods": {"OODPL": {"0.5": [1.2, 1.3, 1.1], "1.0": [0.9, 1.0, 0.8]}, ...}
    (temperature keys as strings; one value per repetition; plotted as median, min–max band)

Training curves come from ``metrics.jsonl`` (see :mod:`oodpl.cli.run_dir`). Every metric shown is
listed with its one-line meaning from :data:`~oodpl.cli.report.glossary.METRIC_MEANINGS`, the
section's ``meanings`` or the run's ``metric_meanings.json``; ``build_report(strict=True)`` refuses
undocumented metrics.
"""

from pathlib import Path

from oodpl.cli.report._checks import ResultError
from oodpl.cli.report.result_files import read_result, write_result
from oodpl.cli.report.results import (
    SCHEMA,
    AccuracyMatrix,
    Calibration,
    CalibrationBin,
    DomainCalibration,
    GoldVsTemperature,
    MetricTable,
    RewardDifferences,
    Section,
    Summary,
    SummaryRow,
    parse_result,
)


def build_report(run_dir: str | Path, *, strict: bool = False) -> tuple[Path, Path]:
    """Rebuild ``report.md`` and ``report.html`` of ``run_dir``; see :mod:`.builder`."""
    from oodpl.cli.report.builder import build_report as _build

    return _build(run_dir, strict=strict)


__all__ = [
    "SCHEMA",
    "AccuracyMatrix",
    "Calibration",
    "CalibrationBin",
    "DomainCalibration",
    "GoldVsTemperature",
    "MetricTable",
    "ResultError",
    "RewardDifferences",
    "Section",
    "Summary",
    "SummaryRow",
    "build_report",
    "parse_result",
    "read_result",
    "write_result",
]

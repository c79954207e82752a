"""Typed result sections stored as ``results/<name>.json`` in a run directory.

The schema is documented in :mod:`oodpl.cli.report` (package docstring). Each section class
validates its JSON on construction (:func:`parse_result`) and serialises with ``to_json()``;
:func:`oodpl.cli.report.result_files.write_result` validates before writing, so a pipeline
learns about a malformed result when it writes it, not when the report is built. Errors are
``ValueError`` (:class:`ResultError`) naming the file and field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from oodpl.cli.report._checks import ResultError as ResultError  # re-exported
from oodpl.cli.report._checks import (
    fail,
    mapping,
    matrix,
    names,
    number,
    numbers,
    text,
)

SCHEMA = "oodpl.results/1"


@dataclasses.dataclass
class Section:
    """Fields shared by every result section."""

    title: str
    description: str = ""
    meanings: dict[str, str] = dataclasses.field(default_factory=dict)
    order: int = 100

    TYPE: ClassVar[str] = ""

    @staticmethod
    def _common(obj: Mapping, where: str) -> dict[str, Any]:
        meanings = obj.get("meanings", {})
        if not isinstance(meanings, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in meanings.items()
        ):
            raise fail(where, "'meanings' must map metric names to one-line descriptions")
        order = obj.get("order", 100)
        if isinstance(order, bool) or not isinstance(order, int):
            raise fail(where, f"'order' must be an integer, got {order!r}")
        return {
            "title": text(obj, "title", where),
            "description": text(obj, "description", where, default=""),
            "meanings": dict(meanings),
            "order": order,
        }

    def metrics(self) -> list[str]:
        """Names of the metrics this section shows (each needs a documented meaning)."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {"schema": SCHEMA, "type": self.TYPE, **data}


@dataclasses.dataclass
class AccuracyMatrix(Section):
    """Accuracy of models trained on ``train_domains`` (rows) evaluated on ``eval_domains``."""

    train_domains: list[str] = dataclasses.field(default_factory=list)
    eval_domains: list[str] = dataclasses.field(default_factory=list)
    values: list[list[float | None]] = dataclasses.field(default_factory=list)
    metric: str = "preference_accuracy"

    TYPE: ClassVar[str] = "accuracy_matrix"

    @classmethod
    def from_json(cls, obj: Mapping, where: str) -> AccuracyMatrix:
        rows = names(obj.get("train_domains"), f"{where}: train_domains")
        cols = names(obj.get("eval_domains"), f"{where}: eval_domains")
        values = matrix(obj.get("values"), len(rows), len(cols), f"{where}: values")
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                if v is not None and not 0.0 <= v <= 1.0:
                    raise fail(f"{where}: values[{i}][{j}]", f"accuracy must be in [0, 1], got {v}")
        return cls(
            **cls._common(obj, where),
            train_domains=rows,
            eval_domains=cols,
            values=values,
            metric=text(obj, "metric", where, default="preference_accuracy"),
        )

    def metrics(self) -> list[str]:
        return [self.metric]


@dataclasses.dataclass
class CalibrationBin:
    """One reliability bin: predictions with confidence in [lower, upper)."""

    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclasses.dataclass
class DomainCalibration:
    """Calibration errors and bins of one domain (METHODS §5)."""

    ece: float
    ace: float | None
    mce: float | None
    brier: float | None
    bins: list[CalibrationBin]


@dataclasses.dataclass
class Calibration(Section):
    """Per-domain calibration of ``p = σ(r_w − r_l)`` with reliability bins."""

    n_bins: int = 10
    binning: str = "uniform"
    domains: dict[str, DomainCalibration] = dataclasses.field(default_factory=dict)

    TYPE: ClassVar[str] = "calibration"

    @classmethod
    def from_json(cls, obj: Mapping, where: str) -> Calibration:
        domains = {}
        for name, entry in mapping(obj.get("domains"), f"{where}: domains").items():
            at = f"{where}: domains.{name}"
            entry = mapping(entry, at)
            bins = []
            raw_bins = entry.get("bins")
            if not isinstance(raw_bins, list) or not raw_bins:
                raise fail(f"{at}.bins", "expected a non-empty list of bins")
            for i, raw in enumerate(raw_bins):
                b = mapping(raw, f"{at}.bins[{i}]")
                count = b.get("count")
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise fail(f"{at}.bins[{i}].count", f"expected an integer >= 0, got {count!r}")
                bins.append(
                    CalibrationBin(
                        lower=number(b.get("lower"), f"{at}.bins[{i}].lower"),
                        upper=number(b.get("upper"), f"{at}.bins[{i}].upper"),
                        count=count,
                        confidence=number(
                            b.get("confidence"), f"{at}.bins[{i}].confidence", allow_null=True
                        ),
                        accuracy=number(
                            b.get("accuracy"), f"{at}.bins[{i}].accuracy", allow_null=True
                        ),
                    )
                )
            domains[name] = DomainCalibration(
                ece=number(entry.get("ece"), f"{at}.ece"),
                ace=number(entry.get("ace"), f"{at}.ace", allow_null=True),
                mce=number(entry.get("mce"), f"{at}.mce", allow_null=True),
                brier=number(entry.get("brier"), f"{at}.brier", allow_null=True),
                bins=bins,
            )
        n_bins = obj.get("n_bins", len(next(iter(domains.values())).bins))
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise fail(f"{where}: n_bins", f"expected an integer >= 1, got {n_bins!r}")
        return cls(
            **cls._common(obj, where),
            n_bins=n_bins,
            binning=text(obj, "binning", where, default="uniform"),
            domains=domains,
        )

    def metrics(self) -> list[str]:
        names = ["ece", "ace", "mce", "brier"]
        present = [
            n for n in names if any(getattr(d, n) is not None for d in self.domains.values())
        ]
        return [*present, "confidence", "accuracy"]


@dataclasses.dataclass
class RewardDifferences(Section):
    """Distributions of ``d = r_w − r_l`` per group (model or domain), for box plots."""

    groups: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    stats: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    metric: str = "reward_difference"

    TYPE: ClassVar[str] = "reward_differences"

    @classmethod
    def from_json(cls, obj: Mapping, where: str) -> RewardDifferences:
        groups: dict[str, list[float]] = {}
        stats: dict[str, dict[str, float]] = {}
        for name, entry in mapping(obj.get("groups"), f"{where}: groups").items():
            at = f"{where}: groups.{name}"
            entry = mapping(entry, at)
            values = numbers(entry.get("values"), f"{at}.values")
            if not values:
                raise fail(f"{at}.values", "needs at least one reward difference")
            groups[name] = [float(v) for v in values if v is not None]
            raw_stats = mapping(entry.get("stats", {}), f"{at}.stats", non_empty=False)
            if raw_stats:
                stats[name] = {
                    k: float(number(v, f"{at}.stats.{k}"))  # type: ignore[arg-type]
                    for k, v in raw_stats.items()
                }
        return cls(
            **cls._common(obj, where),
            groups=groups,
            stats=stats,
            metric=text(obj, "metric", where, default="reward_difference"),
        )

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["groups"] = {
            name: {"values": values, "stats": self.stats.get(name, {})}
            for name, values in self.groups.items()
        }
        del data["stats"]
        return data

    def metrics(self) -> list[str]:
        keys = sorted({k for s in self.stats.values() for k in s})
        return [self.metric, *keys]


@dataclasses.dataclass
class GoldVsTemperature(Section):
    """Gold reward of sampled generations per method and temperature (repetitions as lists)."""

    methods: dict[str, dict[float, list[float]]] = dataclasses.field(default_factory=dict)
    metric: str = "gold_reward"

    TYPE: ClassVar[str] = "gold_vs_temperature"

    @classmethod
    def from_json(cls, obj: Mapping, where: str) -> GoldVsTemperature:
        methods: dict[str, dict[float, list[float]]] = {}
        for method, by_temp in mapping(obj.get("methods"), f"{where}: methods").items():
            at = f"{where}: methods.{method}"
            parsed: dict[float, list[float]] = {}
            for temp, values in mapping(by_temp, at).items():
                try:
                    t = float(temp)
                except (TypeError, ValueError):
                    raise fail(at, f"temperature keys must be numbers, got {temp!r}") from None
                if not math.isfinite(t) or t <= 0:
                    raise fail(at, f"temperature must be > 0, got {temp!r}")
                repetitions = numbers(values, f"{at}.{temp}")
                if not repetitions:
                    raise fail(f"{at}.{temp}", "needs at least one value")
                parsed[t] = [float(v) for v in repetitions if v is not None]
            methods[method] = dict(sorted(parsed.items()))
        return cls(
            **cls._common(obj, where),
            methods=methods,
            metric=text(obj, "metric", where, default="gold_reward"),
        )

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["methods"] = {
            m: {repr(t): v for t, v in temps.items()} for m, temps in self.methods.items()
        }
        return data

    def metrics(self) -> list[str]:
        return [self.metric]


@dataclasses.dataclass
class MetricTable(Section):
    """A table of one metric: rows (methods) by columns (domains, settings), optional std."""

    metric: str = ""
    columns: list[str] = dataclasses.field(default_factory=list)
    rows: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    std: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)
    row_label: str = "method"
    higher_is_better: bool = True

    TYPE: ClassVar[str] = "metric_table"

    @classmethod
    def from_json(cls, obj: Mapping, where: str) -> MetricTable:
        columns = names(obj.get("columns"), f"{where}: columns")
        tables: dict[str, dict[str, list[float | None]]] = {}
        for part in ("rows", "std"):
            raw = mapping(obj.get(part, {}), f"{where}: {part}", non_empty=part == "rows")
            tables[part] = {}
            for name, values in raw.items():
                parsed = numbers(values, f"{where}: {part}.{name}", allow_null=True)
                if len(parsed) != len(columns):
                    raise fail(
                        f"{where}: {part}.{name}",
                        f"has {len(parsed)} values, expected {len(columns)} (one per column)",
                    )
                tables[part][name] = parsed
        unknown = set(tables["std"]) - set(tables["rows"])
        if unknown:
            raise fail(f"{where}: std", f"rows {sorted(unknown)} are not in 'rows'")
        higher = obj.get("higher_is_better", True)
        if not isinstance(higher, bool):
            raise fail(f"{where}: higher_is_better", f"expected true/false, got {higher!r}")
        return cls(
            **cls._common(obj, where),
            metric=text(obj, "metric", where),
            columns=columns,
            rows=tables["rows"],
            std=tables["std"],
            row_label=text(obj, "row_label", where, default="method"),
            higher_is_better=higher,
        )

    def metrics(self) -> list[str]:
        return [self.metric]


@dataclasses.dataclass
class SummaryRow:
    """One headline number."""

    metric: str
    value: float | str
    std: float | None = None
    note: str = ""


@dataclasses.dataclass
class Summary(Section):
    """Headline numbers of a run (key results, one metric per row)."""

    rows: list[SummaryRow] = dataclasses.field(default_factory=list)

    TYPE: ClassVar[str] = "summary"

    @classmethod
    def from_json(cls, obj: Mapping, where: str) -> Summary:
        raw_rows = obj.get("rows")
        if not isinstance(raw_rows, list) or not raw_rows:
            raise fail(f"{where}: rows", "expected a non-empty list of {metric, value} objects")
        rows = []
        for i, raw in enumerate(raw_rows):
            at = f"{where}: rows[{i}]"
            raw = mapping(raw, at)
            value = raw.get("value")
            if not isinstance(value, str):
                value = number(value, f"{at}.value")
            rows.append(
                SummaryRow(
                    metric=text(raw, "metric", at),
                    value=value,  # type: ignore[arg-type]
                    std=number(raw.get("std"), f"{at}.std", allow_null=True),
                    note=text(raw, "note", at, default=""),
                )
            )
        return cls(**cls._common(obj, where), rows=rows)

    def metrics(self) -> list[str]:
        return [row.metric for row in self.rows if not isinstance(row.value, str)]


SECTION_TYPES: dict[str, type[Section]] = {
    cls.TYPE: cls
    for cls in (
        Summary,
        AccuracyMatrix,
        MetricTable,
        Calibration,
        RewardDifferences,
        GoldVsTemperature,
    )
}


def parse_result(obj: Any, where: str = "<result>") -> Section:
    """Validate one result JSON object and return its typed section."""
    obj = mapping(obj, where)
    schema = obj.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise fail(where, f"unsupported schema {schema!r}; this oodpl reads {SCHEMA!r}")
    kind = obj.get("type")
    if kind not in SECTION_TYPES:
        raise fail(where, f"'type' must be one of {sorted(SECTION_TYPES)}, got {kind!r}")
    Section._common(obj, where)  # title, description, meanings, order first
    return SECTION_TYPES[kind].from_json(obj, where)  # type: ignore[attr-defined]

"""Build report.md and report.html of a run directory from the files stored in it.

Inputs (all optional except the directory itself): ``config.yaml``, ``env.json``,
``metrics.jsonl``, ``metric_meanings.json`` and ``results/*.json`` (schema in the package
docstring). The report is a pure function of these files, so ``oodpl report RUN_DIR`` rebuilds
any run's report, e.g. after the results were edited or a newer oodpl draws better plots.
Every metric shown is listed with its one-line meaning; with ``strict=True`` an undocumented
metric is an error, otherwise a warning at the top of the report.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oodpl.cli.errors import BadInputError, PathNotFoundError
from oodpl.cli.report import plots
from oodpl.cli.report.document import (
    Block,
    CodeBlock,
    DocSection,
    Document,
    Glossary,
    Image,
    Paragraph,
    Table,
    slugify,
)
from oodpl.cli.report.glossary import meaning_of
from oodpl.cli.report.html import render_html
from oodpl.cli.report.markdown import IMAGE_DIR, render_markdown
from oodpl.cli.report.result_files import read_result
from oodpl.cli.report.results import (
    SECTION_TYPES,
    AccuracyMatrix,
    Calibration,
    GoldVsTemperature,
    MetricTable,
    ResultError,
    RewardDifferences,
    Section,
    Summary,
)
from oodpl.cli.run_dir import (
    CONFIG_FILE,
    ENV_FILE,
    METRICS_FILE,
    REPORT_HTML,
    REPORT_MD,
    RESULTS_DIR,
    RunDir,
    atomic_write_text,
    read_metrics,
)


def fmt(value: float | str | None, std: float | None = None) -> str:
    """Format a number for a table: 4 significant digits, ``± std`` when given, ``–`` if null."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    text = f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return f"{text} ± {std:.2g}" if std is not None else text


class _Builder:
    def __init__(self, path: Path, extra_meanings: Mapping[str, str]):
        self.path = path
        self.extra_meanings = dict(extra_meanings)
        self.undocumented: list[str] = []
        self.image_names: set[str] = set()

    def image(self, stem: str, png: bytes, alt: str, caption: str = "") -> Image:
        name = slugify(stem)
        candidate, n = name, 2
        while candidate in self.image_names:
            candidate, n = f"{name}-{n}", n + 1
        self.image_names.add(candidate)
        return Image(name=candidate, png=png, alt=alt, caption=caption)

    def glossary(self, metrics: Sequence[str], local: Mapping[str, str]) -> Glossary:
        entries = []
        for metric in dict.fromkeys(metrics):
            meaning = meaning_of(metric, {**self.extra_meanings, **local})
            if meaning is None:
                self.undocumented.append(metric)
                meaning = "undocumented: add its meaning to metric_meanings.json"
            entries.append((metric, meaning))
        return Glossary(entries)

    # ------------------------------------------------------------------ result sections
    def section(self, result: Section, stem: str) -> DocSection:
        blocks: list[Block] = []
        if result.description:
            blocks.append(Paragraph(result.description))
        renderer = {
            Summary: self._summary,
            AccuracyMatrix: self._accuracy,
            MetricTable: self._metric_table,
            Calibration: self._calibration,
            RewardDifferences: self._reward_differences,
            GoldVsTemperature: self._gold,
        }[type(result)]
        blocks.extend(renderer(result, stem))  # type: ignore[operator]
        extra = ["id_accuracy", "mean_ood_accuracy", "accuracy_drop"]
        shown = result.metrics() + (extra if _has_in_distribution(result) else [])
        blocks.append(self.glossary(shown, result.meanings))
        return DocSection(result.title, blocks)

    def _summary(self, result: Summary, stem: str) -> list[Block]:
        rows = [[r.metric, fmt(r.value), fmt(r.std), r.note] for r in result.rows]
        return [Table(["metric", "value", "std", "note"], rows)]

    def _accuracy(self, result: AccuracyMatrix, stem: str) -> list[Block]:
        png = plots.accuracy_heatmap(result)
        blocks: list[Block] = [
            self.image(
                stem,
                png,
                f"{result.metric} heatmap",
                "rows: trained on; columns: evaluated on; outlined cells are in-distribution",
            ),
            Table(
                ["trained on \\ evaluated on", *result.eval_domains],
                [
                    [name, *(fmt(v) for v in row)]
                    for name, row in zip(result.train_domains, result.values, strict=True)
                ],
            ),
        ]
        if _has_in_distribution(result):
            rows = []
            for name, row in zip(result.train_domains, result.values, strict=True):
                if name not in result.eval_domains:
                    continue
                in_dist = row[result.eval_domains.index(name)]
                ood = [
                    v
                    for d, v in zip(result.eval_domains, row, strict=True)
                    if d != name and v is not None
                ]
                mean_ood = float(np.mean(ood)) if ood else None
                drop = in_dist - mean_ood if in_dist is not None and mean_ood is not None else None
                rows.append([name, fmt(in_dist), fmt(mean_ood), fmt(drop)])
            blocks.append(
                Table(["trained on", "id_accuracy", "mean_ood_accuracy", "accuracy_drop"], rows)
            )
        return blocks

    def _metric_table(self, result: MetricTable, stem: str) -> list[Block]:
        names = list(result.rows)
        rows = [
            [
                name,
                *(
                    fmt(v, s)
                    for v, s in zip(
                        result.rows[name],
                        result.std.get(name, [None] * len(result.columns)),
                        strict=True,
                    )
                ),
            ]
            for name in names
        ]
        emphasis = set()
        for c in range(len(result.columns)):
            column = [
                (result.rows[n][c], r) for r, n in enumerate(names) if result.rows[n][c] is not None
            ]
            if len(column) > 1:
                best = max(column)[0] if result.higher_is_better else min(column)[0]
                emphasis |= {(r, c + 1) for v, r in column if v == best}
        direction = "higher" if result.higher_is_better else "lower"
        caption = f"{result.metric}; best per column in bold ({direction} is better)"
        return [
            Table([result.row_label, *result.columns], rows, caption=caption, emphasis=emphasis)
        ]

    def _calibration(self, result: Calibration, stem: str) -> list[Block]:
        png = plots.reliability_diagram(result)
        rows = [
            [
                name,
                fmt(d.ece),
                fmt(d.ace),
                fmt(d.mce),
                fmt(d.brier),
                str(sum(b.count for b in d.bins)),
            ]
            for name, d in result.domains.items()
        ]
        return [
            self.image(
                stem,
                png,
                "reliability diagrams",
                f"{result.n_bins} {result.binning} bins; bars: accuracy per bin; "
                "hatched: gap to confidence; dashed: perfect calibration",
            ),
            Table(["domain", "ece", "ace", "mce", "brier", "predictions"], rows),
        ]

    def _reward_differences(self, result: RewardDifferences, stem: str) -> list[Block]:
        png = plots.reward_difference_boxplot(result)
        stat_keys = sorted({k for s in result.stats.values() for k in s})
        rows = []
        for name, values in result.groups.items():
            array = np.asarray(values, dtype=float)
            provided = result.stats.get(name, {})
            rows.append(
                [
                    name,
                    str(array.size),
                    fmt(float(array.mean())),
                    fmt(float(np.median(array))),
                    *(fmt(provided.get(k)) for k in stat_keys),
                ]
            )
        return [
            self.image(
                stem,
                png,
                "reward-difference box plots",
                "box: quartiles; whiskers: Tukey fences (1.5·IQR); triangle: mean",
            ),
            Table(["group", "n", "mean", "median", *stat_keys], rows),
        ]

    def _gold(self, result: GoldVsTemperature, stem: str) -> list[Block]:
        png = plots.gold_reward_vs_temperature(result)
        temperatures = sorted({t for m in result.methods.values() for t in m})
        rows = []
        for method, by_temp in result.methods.items():
            cells = []
            for t in temperatures:
                values = by_temp.get(t)
                cells.append(
                    "–"
                    if not values
                    else f"{fmt(float(np.median(values)))} [{fmt(min(values))}, {fmt(max(values))}]"
                )
            rows.append([method, *cells])
        return [
            self.image(
                stem,
                png,
                f"{result.metric} versus temperature",
                "line: median over repetitions; band: min–max",
            ),
            Table(
                ["method", *(f"T={t:g}" for t in temperatures)],
                rows,
                caption=f"{result.metric}: median [min, max] over repetitions",
            ),
        ]

    # ------------------------------------------------------------------ run sections
    def curves(self, records: list[dict[str, Any]]) -> DocSection | None:
        figures = plots.training_curves(records)
        if not figures:
            return None
        blocks: list[Block] = []
        shown: list[str] = []
        for index, (names, png) in enumerate(figures):
            blocks.append(
                self.image(
                    f"training-curves-{index + 1}", png, "training curves: " + ", ".join(names)
                )
            )
            shown.extend(names)
        phases = sorted({str(r.get("phase", "train")) for r in records})
        blocks.insert(
            0,
            Paragraph(f"{len(records)} records from {METRICS_FILE}; phases: {', '.join(phases)}."),
        )
        blocks.append(self.glossary(shown, {}))
        return DocSection("Training curves", blocks)


def _has_in_distribution(result: Section) -> bool:
    return isinstance(result, AccuracyMatrix) and bool(
        set(result.train_domains) & set(result.eval_domains)
    )


def _overview(path: Path, env: Mapping[str, Any] | None, config_text: str | None) -> DocSection:
    rows = [["run directory", str(path.resolve())]]
    config: Mapping[str, Any] = {}
    if config_text:
        import yaml

        try:
            loaded = yaml.safe_load(config_text)
            config = loaded if isinstance(loaded, Mapping) else {}
        except yaml.YAMLError:
            config = {}
    for key in ("kind", "name", "seed"):
        if key in config:
            rows.append([key, str(config[key])])
    blocks: list[Block] = []
    if env:
        rows.append(["created", str(env.get("created", "–"))])
        if env.get("command"):
            rows.append(["command", " ".join(map(str, env["command"]))])
        git = env.get("git") or {}
        if git:
            rows.append(
                ["git commit", f"{git.get('commit', '?')}{' (dirty)' if git.get('dirty') else ''}"]
            )
        device = env.get("device") or {}
        if device:
            rows.append(["device", ", ".join(f"{k}={v}" for k, v in device.items())])
        rows.append(["python", str(env.get("python", "–"))])
        packages = env.get("packages") or {}
        installed = [f"{name} {version}" for name, version in packages.items() if version]
        if installed:
            rows.append(["packages", ", ".join(installed)])
    blocks.append(Table(["", "value"], rows))
    if config.get("notes"):
        blocks.append(Paragraph(str(config["notes"])))
    return DocSection("Run", blocks)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{path}: invalid JSON: {exc.msg} (line {exc.lineno})") from None


def build_document(run_dir: str | Path, *, strict: bool = False) -> Document:
    """Read a run directory and assemble the report document (no files written)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise PathNotFoundError(path, "run directory")
    run = RunDir(path)
    env = _read_json(path / ENV_FILE) if (path / ENV_FILE).exists() else None
    config_text = (
        (path / CONFIG_FILE).read_text(encoding="utf-8") if (path / CONFIG_FILE).exists() else None
    )
    try:
        records = read_metrics(path / METRICS_FILE)
        builder = _Builder(path, run.metric_meanings())
        results = []
        for file in sorted((path / RESULTS_DIR).glob("*.json")):
            results.append((read_result(file), file.stem))
    except (ResultError, ValueError) as exc:
        raise BadInputError(str(exc)) from None
    if not (env or config_text or records or results):
        raise BadInputError(
            f"{path} is not an oodpl run directory: no {CONFIG_FILE}, {ENV_FILE}, "
            f"{METRICS_FILE} or {RESULTS_DIR}/*.json"
        )
    title = "oodpl run report"
    if config_text:
        title = f"oodpl report: {path.name}"
    document = Document(title=title)
    document.sections.append(_overview(path, env, config_text))
    type_rank = {name: rank for rank, name in enumerate(SECTION_TYPES)}
    results.sort(key=lambda item: (item[0].order, type_rank[item[0].TYPE], item[1]))
    for result, stem in results:
        document.sections.append(builder.section(result, stem))
    curves = builder.curves(records)
    if curves:
        document.sections.append(curves)
    if config_text:
        document.sections.append(DocSection("Configuration", [CodeBlock(config_text, "yaml")]))
    if builder.undocumented:
        names = ", ".join(sorted(set(builder.undocumented)))
        if strict:
            raise BadInputError(
                f"metrics without a documented meaning: {names}",
                hint="add them to metric_meanings.json or the result's 'meanings'",
            )
        document.warnings.append(f"metrics without a documented meaning: {names}")
    if not results and not records:
        document.warnings.append("this run has no results/*.json and no metrics yet")
    return document


def build_report(run_dir: str | Path, *, strict: bool = False) -> tuple[Path, Path]:
    """Write report.md (+ report_files/*.png) and report.html; returns their paths."""
    return write_report(run_dir, build_document(run_dir, strict=strict))


def write_report(run_dir: str | Path, document: Document) -> tuple[Path, Path]:
    """Render ``document`` into ``run_dir``: report.md, report_files/*.png, report.html."""
    path = Path(run_dir)
    markdown, files = render_markdown(document)
    image_dir = path / IMAGE_DIR
    if image_dir.is_dir():
        for old in image_dir.glob("*.png"):
            old.unlink()
    if files:
        image_dir.mkdir(exist_ok=True)
    for relative, png in files.items():
        (path / relative).write_bytes(png)
    atomic_write_text(path / REPORT_MD, markdown)
    atomic_write_text(path / REPORT_HTML, render_html(document))
    return path / REPORT_MD, path / REPORT_HTML


__all__ = ["build_document", "build_report", "fmt", "write_report"]

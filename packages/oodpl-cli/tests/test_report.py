"""Report building: results schema, derived tables, Markdown + self-contained HTML, rebuilds."""

from __future__ import annotations

import base64
import json
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest

from oodpl.cli.errors import BadInputError
from oodpl.cli.report import build_report
from oodpl.cli.report.builder import build_document, fmt
from oodpl.cli.report.document import Glossary, Image, Table
from oodpl.cli.report.glossary import METRIC_MEANINGS, meaning_of
from oodpl.cli.report.result_files import read_result
from oodpl.cli.report.results import (
    SECTION_TYPES,
    AccuracyMatrix,
    ResultError,
    parse_result,
)
from oodpl.cli.run_dir import RunDir

PNG = b"\x89PNG\r\n\x1a\n"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def section(document, title: str):
    return next(s for s in document.sections if s.title == title)


# --------------------------------------------------------------------------- results schema
@pytest.mark.parametrize("section_type", list(SECTION_TYPES))
def test_every_section_type_round_trips_through_json(section_type: str, samples: dict) -> None:
    (result,) = [r for r in samples.values() if section_type == r.TYPE]
    payload = json.loads(json.dumps(result.to_json()))
    assert payload["schema"] == "oodpl.results/1" and payload["type"] == result.TYPE
    assert parse_result(payload, section_type) == result


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"type": "nope", "title": "t"}, "'type' must be one of"),
        ({"type": "summary"}, "'title' must be a non-empty string"),
        ({"type": "summary", "title": "t", "schema": "oodpl.results/9"}, "unsupported schema"),
        (
            {
                "type": "accuracy_matrix",
                "title": "t",
                "train_domains": ["a"],
                "eval_domains": ["a", "b"],
                "values": [[0.5]],
            },
            r"values\[0\]: has 1 entries, expected 2",
        ),
        (
            {
                "type": "accuracy_matrix",
                "title": "t",
                "train_domains": ["a"],
                "eval_domains": ["a"],
                "values": [[1.5]],
            },
            r"values\[0\]\[0\]: accuracy must be in \[0, 1\]",
        ),
        (
            {
                "type": "accuracy_matrix",
                "title": "t",
                "train_domains": ["a", "a"],
                "eval_domains": ["a"],
                "values": [[0.5], [0.5]],
            },
            "names must be unique",
        ),
        (
            {
                "type": "metric_table",
                "title": "t",
                "metric": "m",
                "columns": ["a"],
                "rows": {"x": [0.1]},
                "std": {"y": [0.1]},
            },
            r"rows \['y'\] are not in 'rows'",
        ),
        (
            {
                "type": "calibration",
                "title": "t",
                "domains": {
                    "d": {
                        "ece": 0.1,
                        "bins": [
                            {
                                "lower": 0,
                                "upper": 1,
                                "count": -1,
                                "confidence": 0.5,
                                "accuracy": 0.5,
                            }
                        ],
                    }
                },
            },
            r"domains.d.bins\[0\].count: expected an integer >= 0",
        ),
        (
            {"type": "gold_vs_temperature", "title": "t", "methods": {"m": {"hot": [1.0]}}},
            "temperature keys must be numbers",
        ),
        (
            {"type": "reward_differences", "title": "t", "groups": {"g": {"values": []}}},
            "needs at least one reward difference",
        ),
        (
            {"type": "summary", "title": "t", "rows": [{"metric": "m", "value": True}]},
            r"rows\[0\].value: expected a number",
        ),
    ],
)
def test_malformed_results_name_the_field(payload: dict, match: str) -> None:
    with pytest.raises(ResultError, match=match):
        parse_result(payload, "results/x.json")


def test_non_finite_numbers_in_result_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text('{"type": "summary", "title": "t", "rows": [{"metric": "m", "value": NaN}]}')
    with pytest.raises(ResultError, match=r"r\.json: invalid JSON: non-finite number NaN"):
        read_result(path)


# --------------------------------------------------------------------------------- glossary
def test_glossary_meanings_are_one_line_and_resolve_prefixed_names() -> None:
    assert all(text and "\n" not in text for text in METRIC_MEANINGS.values())
    assert meaning_of("eval/pl_accuracy") == METRIC_MEANINGS["pl_accuracy"]
    assert meaning_of("eval_loss") == METRIC_MEANINGS["eval_loss"]
    assert meaning_of("train_grad_norm") == METRIC_MEANINGS["grad_norm"]
    assert meaning_of("lambda/book") == METRIC_MEANINGS["lambda"] + ", for book"
    assert meaning_of("loss_std").startswith("standard deviation of")
    assert meaning_of("custom", {"custom": "mine"}) == "mine"
    assert meaning_of("totally_unknown") is None


# ----------------------------------------------------------------------------- the document
def test_document_has_every_section_with_images_tables_and_meanings(sample_document) -> None:
    document = sample_document
    titles = [s.title for s in document.sections]
    assert titles == [
        "Run",
        "Key results",
        "OOD accuracy",
        "PL accuracy on the test domain",
        "Calibration",
        "Reward differences",
        "Gold reward versus temperature",
        "Training curves",
        "Configuration",
    ]
    assert len(document.images()) == 5 and all(i.png.startswith(PNG) for i in document.images())
    for doc_section in document.sections[1:-1]:
        glossaries = [b for b in doc_section.blocks if isinstance(b, Glossary)]
        assert len(glossaries) == 1, doc_section.title
        assert all(meaning for _, meaning in glossaries[0].entries)
    assert document.warnings == []


def test_accuracy_section_derives_in_and_out_of_distribution_numbers(
    sample_document, samples: dict
) -> None:
    matrix = samples["ood_accuracy"]
    assert isinstance(matrix, AccuracyMatrix)
    document = sample_document
    tables = [b for b in section(document, "OOD accuracy").blocks if isinstance(b, Table)]
    derived = tables[1]
    assert derived.columns == ["trained on", "id_accuracy", "mean_ood_accuracy", "accuracy_drop"]
    for row, name, values in zip(derived.rows, matrix.train_domains, matrix.values, strict=True):
        i = matrix.eval_domains.index(name)
        others = [v for j, v in enumerate(values) if j != i and v is not None]
        expected_mean = sum(others) / len(others)
        assert row == [name, fmt(values[i]), fmt(expected_mean), fmt(values[i] - expected_mean)]


def test_metric_table_bolds_the_best_value_per_column(sample_document, samples: dict) -> None:
    table = samples["pl_accuracy"]
    document = sample_document
    rendered = next(b for b in section(document, table.title).blocks if isinstance(b, Table))
    names = list(table.rows)
    for c in range(len(table.columns)):
        column = {n: table.rows[n][c] for n in names if table.rows[n][c] is not None}
        best = max(column.values())
        expected = {(names.index(n), c + 1) for n, v in column.items() if v == best}
        assert {cell for cell in rendered.emphasis if cell[1] == c + 1} == expected
    hpl = rendered.rows[names.index("HPL")]
    assert hpl[1] == fmt(table.rows["HPL"][0], table.std["HPL"][0]) and "±" in hpl[1]


def test_gold_table_reports_median_and_range(sample_document, samples: dict) -> None:
    gold = samples["gold"]
    document = sample_document
    rendered = next(b for b in section(document, gold.title).blocks if isinstance(b, Table))
    values = gold.methods["OODPL"][0.5]
    expected = f"{fmt(statistics.median(values))} [{fmt(min(values))}, {fmt(max(values))}]"
    row = next(r for r in rendered.rows if r[0] == "OODPL")
    assert row[rendered.columns.index("T=0.5")] == expected


# --------------------------------------------------------------------------- written reports
def test_markdown_and_self_contained_html_are_written(reported_run: RunDir) -> None:
    sample_run = reported_run
    markdown_path = sample_run.path / "report.md"
    html_path = sample_run.path / "report.html"
    markdown = markdown_path.read_text()
    for line in markdown.splitlines():
        if line.startswith("!["):
            target = line[line.index("(") + 1 : -1]
            assert (sample_run.path / target).read_bytes().startswith(PNG)
    assert markdown.count("![") == 5 and "`pl_accuracy`:" in markdown

    parser = _Collector()
    parser.feed(html_path.read_text())
    tags = {tag for tag, _ in parser.tags}
    assert not tags & {"script", "link", "iframe", "object", "embed"}
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 5
    for attrs in images:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
        assert attrs["alt"]
    for tag, attrs in parser.tags:
        for key in ("src", "href"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), (tag, value)


def test_report_rebuild_is_deterministic_and_replaces_stale_images(
    tmp_path: Path, samples: dict
) -> None:
    sample_run = RunDir.create(tmp_path, "r")
    sample_run.write_result("gold", samples["gold"])
    _, html_path = build_report(sample_run.path)
    first = html_path.read_bytes()
    stale = sample_run.path / "report_files" / "old-figure.png"
    stale.write_bytes(PNG)
    html_path.unlink()
    build_report(sample_run.path)
    assert html_path.read_bytes() == first
    assert not stale.exists()


def test_undocumented_metrics_warn_or_fail_in_strict_mode(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    run.log_metrics(0, {"loss": 1.0, "wibble": 2.0})
    assert build_document(run.path).warnings == ["metrics without a documented meaning: wibble"]
    with pytest.raises(BadInputError, match="metrics without a documented meaning: wibble"):
        build_document(run.path, strict=True)
    run.describe_metrics({"wibble": "how much the model wibbles"})
    assert build_document(run.path, strict=True).warnings == []


def test_result_meanings_document_custom_metrics(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    run.write_result(
        "t",
        {
            "type": "metric_table",
            "title": "T",
            "metric": "judge_score",
            "columns": ["a"],
            "rows": {"m": [1.0]},
            "meanings": {"judge_score": "a custom score"},
        },
    )
    document = build_document(run.path, strict=True)
    glossary = next(b for b in section(document, "T").blocks if isinstance(b, Glossary))
    assert glossary.entries == [("judge_score", "a custom score")]


def test_a_result_file_with_an_error_is_named(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    (run.results_dir / "broken.json").write_text('{"type": "summary", "title": "x", "rows": 3}')
    with pytest.raises(BadInputError, match=r"broken\.json: rows: expected a non-empty list"):
        build_report(run.path)


def test_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="is not an oodpl run directory"):
        build_report(tmp_path)


def test_images_have_unique_names_for_same_stem(tmp_path: Path, samples: dict) -> None:
    run = RunDir.create(tmp_path, "r")
    results = samples
    run.write_result("a_b", results["gold"])
    run.write_result("a-b", results["reward_diff"])
    images = build_document(run.path).images()
    assert sorted(image.name for image in images) == ["a-b", "a-b-2"]
    assert all(isinstance(i, Image) for i in images)

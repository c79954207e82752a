"""End to end: ``oodpl quickstart --fast`` trains every model of the three experiments and writes a
run directory whose report shows all three with numbers from this run, plus a terminal summary."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from oodpl.cli.main import oodpl

HEADINGS = ("(a) OODPL", "(b) EXRM vs DPORM", "(c) MultiTask vs MORE vs Top")
RESULTS = {
    "00-summary",
    "a1-pl-accuracy",
    "a2-rm-accuracy",
    "a3-gold-kitchen",
    "b1-matrix-exrm",
    "b1-matrix-dporm",
    "b3-mean-ood",
    "c1-accuracy",
    "c2-ece",
    "c3-calibration-multitask",
    "c3-calibration-more",
    "c3-calibration-top",
    "c4-reward-differences",
}
NUMBER = re.compile(r"\d\.\d+")


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("quickstart")
    result = CliRunner().invoke(
        oodpl,
        ["quickstart", "--fast", "--output-dir", str(out), "--name", "qs", "--seed", "1"],
        prog_name="oodpl",
    )
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return out / "qs", result


def section(markdown: str, heading: str) -> str:
    """The Markdown text of every '## <heading>...' section."""
    parts = re.split(r"^## ", markdown, flags=re.MULTILINE)
    found = [p for p in parts if p.startswith(heading)]
    assert found, f"no section starting with {heading!r}"
    return "\n".join(found)


def test_run_directory_holds_config_env_metrics_results_and_report(quickstart_run) -> None:
    path, _ = quickstart_run
    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["kind"] == "quickstart" and config["seed"] == 1
    assert config["quickstart"] == {
        "experiments": ["oodpl", "dporm", "more"],
        "full": False,
        "fast": True,
    }
    env = json.loads((path / "env.json").read_text())
    assert env["seed"] == 1 and env["packages"]["oodpl-cli"]
    assert {p.stem for p in (path / "results").glob("*.json")} == RESULTS
    phases = {json.loads(line)["phase"] for line in (path / "metrics.jsonl").open()}
    assert {"sft", "dpo", "hpl", "meta-test", "multitask", "more"} <= phases
    assert (path / "report.md").is_file() and (path / "report.html").is_file()
    assert list((path / "report_files").glob("*.png"))


def test_report_shows_all_three_experiments_with_numbers(quickstart_run) -> None:
    path, _ = quickstart_run
    markdown = (path / "report.md").read_text()
    html = (path / "report.html").read_text()
    assert "metrics without a documented meaning" not in markdown
    for heading in HEADINGS:
        text = section(markdown, heading)
        table_rows = [line for line in text.splitlines() if line.startswith("| ")]
        assert any(NUMBER.search(line) for line in table_rows), heading
        assert heading in html
    for method in ("SFT", "DPO", "HPL", "PPO(tr)", "OODPL"):
        assert re.search(rf"^\| {re.escape(method)} \| (\*\*)?\d\.\d+", markdown, re.MULTILINE)
    assert "<img" in html and "data:image/png;base64," in html


def test_numbers_come_from_the_run_and_are_consistent(quickstart_run) -> None:
    path, _ = quickstart_run
    load = lambda name: json.loads((path / "results" / f"{name}.json").read_text())  # noqa: E731
    pl = load("a1-pl-accuracy")["rows"]
    summary = {(r["metric"], r["note"]): r["value"] for r in load("00-summary")["rows"]}
    for method, (value,) in pl.items():
        assert 0.0 <= value <= 1.0
        assert summary[("pl_accuracy", f"(a) {method}, kitchen")] == pytest.approx(value)
    exrm = load("b1-matrix-exrm")
    assert (
        exrm["train_domains"] == exrm["eval_domains"] == ["books", "dvd", "electronics", "kitchen"]
    )
    cells = [v for row in exrm["values"] for v in row]
    assert all(0.0 <= v <= 1.0 for v in cells)
    ece = load("c2-ece")["rows"]
    assert set(ece) == {"MultiTask", "MORE", "Top"}
    for values in ece.values():
        assert all(math.isfinite(v) and v >= 0 for v in values)
        assert values[-1] == pytest.approx(sum(values[:-1]) / 4)  # the "mean" column
    times = [r for r in load("00-summary")["rows"] if r["metric"] == "wall_time_s"]
    assert len(times) == 5 and all(r["value"] >= 0 for r in times)


def test_terminal_prints_the_summary_table_and_report_path(quickstart_run) -> None:
    path, result = quickstart_run
    out = result.stdout
    assert "quickstart summary" in out
    for text in ("pl_accuracy", "exrm_win_share", "ece", "(a) OODPL", "wall_time_s"):
        assert text in out
    report = re.search(r"^report: (\S+)$", out, re.MULTILINE)
    assert report and Path(report.group(1)) == path / "report.html"
    assert "Traceback" not in out + (result.stderr or "")

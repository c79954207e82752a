"""``oodpl study dporm``: seed aggregation math, a tiny real run, and config errors."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from oodpl.cli.main import oodpl
from oodpl.cli.pipelines.exp_dporm import DpormOutcome, DpormPlan
from oodpl.cli.pipelines.study import aggregate

TINY = [
    "study.seeds=0,1",
    "study.settings=books",
    "data.domains=books,dvd",
    "data.sizes.fine_tuning=8",
    "data.sizes.preference_train=8",
    "data.sizes.eval_reference=2",
    "data.sizes.eval_preference=6",
    "study.sft_steps=1",
    "study.reward_steps=1",
    "study.dpo_steps=1",
    "train.batch_size=4",
    "model.vocab_size=300",
]


def invoke(*args: str):
    return CliRunner().invoke(oodpl, list(args), prog_name="oodpl")


def outcome(exrm_books: float, dporm_books: float) -> DpormOutcome:
    result = DpormOutcome(settings=["dvd"], domains=["books", "dvd"])
    result.accuracy = {
        "EXRM": {"dvd": {"books": exrm_books, "dvd": 0.9}},
        "DPORM": {"dvd": {"books": dporm_books, "dvd": 0.8}},
    }
    return result


def test_aggregate_reports_mean_and_sample_std_over_seeds() -> None:
    outcomes = [outcome(0.7, 0.6), outcome(0.5, 0.65), outcome(0.6, 0.55)]
    sections, rows = aggregate(outcomes, DpormPlan(), [0, 1, 2])
    by_key = {(r.metric, r.note.split(",")[0]): r for r in rows}
    ood = by_key[("mean_ood_accuracy", "EXRM")]
    assert ood.value == pytest.approx(0.6)
    assert ood.std == pytest.approx(statistics.stdev([0.7, 0.5, 0.6]))
    drop = by_key[("accuracy_drop", "DPORM")]
    assert drop.value == pytest.approx(0.8 - 0.6)
    assert drop.std == pytest.approx(statistics.stdev([0.2, 0.15, 0.25]))
    share = by_key[("exrm_win_share", "2/3 (seed")]
    assert share.value == pytest.approx(2 / 3)
    table = sections["s2-mean_ood_accuracy"]
    assert table.rows["DPORM"] == pytest.approx([0.6, 0.6])
    assert table.std["EXRM"][0] == pytest.approx(ood.std)
    assert sections["s2-accuracy_drop"].higher_is_better is False
    matrix = sections["s1-matrix-exrm"]
    assert matrix.values == [[pytest.approx(0.6), pytest.approx(0.9)]]


def test_tiny_study_writes_matrices_tables_and_summary(tmp_path: Path) -> None:
    args = ["study", "dporm", "--output-dir", str(tmp_path), "--name", "s", "--no-progress"]
    result = invoke(*args, *(f"--set={item}" for item in TINY))
    assert result.exit_code == 0, result.output + (result.stderr or "")
    run = tmp_path / "s"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["kind"] == "study" and config["study"]["seeds"] == [0, 1]
    names = {p.stem for p in (run / "results").glob("*.json")}
    assert {"00-summary", "s1-matrix-exrm", "s1-matrix-dporm", "s2-id_accuracy"} <= names
    summary = json.loads((run / "results" / "00-summary.json").read_text())["rows"]
    ood = [r for r in summary if r["metric"] == "mean_ood_accuracy"]
    assert len(ood) == 2 and all(0 <= r["value"] <= 1 and r["std"] is not None for r in ood)
    matrix = json.loads((run / "results" / "s1-matrix-exrm.json").read_text())
    assert matrix["train_domains"] == ["books"] and matrix["eval_domains"] == ["books", "dvd"]
    assert "EXRM vs DPORM" in (run / "report.md").read_text()
    assert "study dporm" in result.stdout and "exrm_win_share" in result.stdout


@pytest.mark.parametrize(
    ("sets", "fragment"),
    [
        (["data.source=hh-rlhf"], "runs on the synthetic benchmark"),
        (["study.settings=music"], "study.settings: ['music'] are not domains"),
        (["study.seeds=1,1"], "study.seeds: seeds are listed more than once"),
        (["kind=iterate"], "conflicts with 'oodpl study'"),
    ],
)
def test_bad_study_configs_are_one_line_errors(
    tmp_path: Path, sets: list[str], fragment: str
) -> None:
    result = invoke("study", "dporm", "--output-dir", str(tmp_path), *(f"--set={s}" for s in sets))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert not list(tmp_path.iterdir())  # nothing trained, no run directory

"""Quickstart building blocks without training: plans, config, progress, result math, CLI errors.

The end-to-end ``oodpl quickstart --fast`` run is tests/test_quickstart_e2e.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from oodpl.cli.config.loader import dump_config, load_config
from oodpl.cli.errors import ConfigError
from oodpl.cli.main import oodpl
from oodpl.cli.pipelines import exp_dporm, exp_oodpl
from oodpl.cli.pipelines.exp_common import (
    StageTracker,
    cpu_threads,
    mean,
    resolve_experiment_config,
    std,
)
from oodpl.cli.pipelines.quickstart import quickstart_plan, run_config
from oodpl.cli.report import read_result
from oodpl.cli.run_dir import RunDir

DOMAINS = ["books", "dvd", "kitchen"]


def invoke(*args: str):
    return CliRunner().invoke(oodpl, list(args), prog_name="oodpl")


# ---------------------------------------------------------------------------------- plans
def test_plan_rejects_unknown_preset_and_fast_plan_is_smaller() -> None:
    with pytest.raises(ValueError, match="preset must be one of"):
        quickstart_plan(preset="pythia-huge")
    fast, default = quickstart_plan(fast=True), quickstart_plan()
    assert fast.model.sft_steps < default.model.sft_steps
    assert fast.sizes.preference_train < default.sizes.preference_train
    assert fast.oodpl.meta_steps < default.oodpl.meta_steps
    assert quickstart_plan(preset="t5-tiny").model.preset == "t5-tiny"


def test_run_config_round_trips_through_config_yaml(tmp_path: Path) -> None:
    plan = quickstart_plan(fast=True)
    config = run_config(
        plan,
        output_dir=tmp_path,
        seed=3,
        full=True,
        fast=True,
        experiments=["oodpl", "more"],
        name="qs",
    )
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    loaded = load_config(path)
    assert loaded == config
    assert loaded.kind == "quickstart" and loaded.seed == 3
    assert loaded.quickstart.full and loaded.quickstart.experiments == ["oodpl", "more"]
    assert loaded.data.sizes == plan.sizes


# ---------------------------------------------------------------------------- helpers
def test_stage_tracker_times_every_stage_and_grows_its_total() -> None:
    tracker = StageTracker(1, disable=True)
    tracker.plan(2)
    assert tracker.total == 3
    with tracker:
        for label in ("one", "two"):
            with tracker.stage(label):
                pass
        tracker.plan(1)
    assert list(tracker.times) == ["one", "two"] and tracker.total == 4
    assert all(seconds >= 0 for seconds in tracker.times.values())


def test_cpu_threads_uses_one_thread_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    with cpu_threads() as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_mean_and_std_match_closed_forms() -> None:
    assert mean([1.0, None, 3.0]) == 2.0 and mean([None]) is None
    assert std([1.0]) is None
    assert std([1.0, 2.0, 4.0]) == pytest.approx(math.sqrt(7 / 3))


def test_experiment_config_defaults_overrides_and_kind_conflicts(tmp_path: Path) -> None:
    config = resolve_experiment_config(
        "iterate", None, ["iterate.iterations=2"], output_dir=tmp_path, name="x"
    )
    assert config.kind == "iterate" and config.iterate.iterations == 2
    assert config.output_dir == str(tmp_path) and config.name == "x"
    with pytest.raises(ConfigError, match="conflicts with 'oodpl iterate'"):
        resolve_experiment_config("iterate", None, ["kind=study"])
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("kind: sft\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml.*kind 'sft' does not match"):
        resolve_experiment_config("study", wrong, [])
    typo = tmp_path / "typo.yaml"
    typo.write_text("kind: study\nstudy:\n  seedz: [1]\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml:3.*study\.seedz.*study\.seeds"):
        resolve_experiment_config("study", typo, [])


# ---------------------------------------------------------------- experiment (b) math
def dporm_outcome() -> exp_dporm.DpormOutcome:
    outcome = exp_dporm.DpormOutcome(settings=["books", "dvd"], domains=DOMAINS)
    outcome.accuracy = {
        "EXRM": {
            "books": {"books": 0.9, "dvd": 0.7, "kitchen": 0.6},
            "dvd": {"books": 0.5, "dvd": 0.8, "kitchen": 0.65},
        },
        "DPORM": {
            "books": {"books": 0.85, "dvd": 0.6, "kitchen": 0.6},
            "dvd": {"books": 0.55, "dvd": 0.9, "kitchen": 0.6},
        },
    }
    return outcome


def test_dporm_outcome_id_ood_and_win_share() -> None:
    outcome = dporm_outcome()
    assert outcome.id_accuracy("EXRM", "dvd") == 0.8
    assert outcome.ood_accuracy("EXRM", "books") == pytest.approx(0.65)
    assert outcome.ood_accuracy("DPORM", "dvd") == pytest.approx(0.575)
    # OOD cells: books->dvd 0.7>0.6 win, books->kitchen tie (no win), dvd->books loss,
    # dvd->kitchen 0.65>0.6 win
    assert outcome.win_cells() == (2, 4)
    rows = {(r.metric, r.note): r.value for r in exp_dporm.summary_rows(outcome)}
    assert rows[("exrm_win_share", "(b) 2/4 OOD cells")] == 0.5
    assert rows[("id_accuracy", "(b) EXRM")] == pytest.approx(0.85)


def test_dporm_sections_are_valid_results(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "b")
    wb = type("WB", (), {"plan": None})()
    for name, section in exp_dporm.sections(dporm_outcome(), exp_dporm.DpormPlan(), wb).items():
        read = read_result(run.write_result(name, section))
        assert read.title.startswith("(b) EXRM vs DPORM")
    matrix = read_result(run.results_dir / "b1-matrix-dporm.json")
    assert matrix.metric == "dporm_accuracy" and matrix.values[1] == [0.55, 0.9, 0.6]
    table = read_result(run.results_dir / "b3-mean-ood.json")
    assert table.rows["EXRM"] == pytest.approx([0.65, 0.575, 0.6125])


# ---------------------------------------------------------------- experiment (a) rows
def test_oodpl_summary_uses_median_gold_at_the_highest_temperature() -> None:
    outcome = exp_oodpl.OodplOutcome(held_out=["kitchen"])
    methods = exp_oodpl.METHODS
    outcome.pl_accuracy = {m: {"kitchen": 0.5 + 0.05 * i} for i, m in enumerate(methods)}
    outcome.gold = {
        "kitchen": {m: {0.5: [9.0], 1.0: [3.0, 1.0, 2.0 + i]} for i, m in enumerate(methods)}
    }
    rows = exp_oodpl.summary_rows(outcome)
    pl = [r for r in rows if r.metric == "pl_accuracy"]
    gold = [r for r in rows if r.metric == "gold_reward"]
    assert [r.value for r in pl] == pytest.approx([0.5 + 0.05 * i for i in range(len(methods))])
    assert [r.value for r in gold] == [2.0] + [3.0] * (len(methods) - 1)  # median of [1, 3, 2+i]
    assert all("T=1" in r.note for r in gold)


# --------------------------------------------------------------------------------- CLI
def test_help_lists_the_experiment_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("quickstart", "study", "iterate"):
        assert f"  {name} " in result.output
    help_text = invoke("quickstart", "--help").output
    for option in ("--output-dir", "--seed", "--full", "--preset", "--fast"):
        assert option in help_text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["quickstart", "--preset", "pythia-huge"], "'pythia-huge' is not one of"),
        (["quickstart", "--seed", "-1"], "--seed"),
        (["quickstart", "--only", "zzz"], "'zzz' is not one of"),
    ],
)
def test_bad_quickstart_options_are_one_line_errors(args: list[str], fragment: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]

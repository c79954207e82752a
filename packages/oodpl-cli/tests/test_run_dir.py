"""The run directory: layout, resolved config, env.json (no secrets), metrics.jsonl, results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from oodpl.cli.config import config_from_dict, load_config
from oodpl.cli.errors import BadInputError, PathNotFoundError
from oodpl.cli.report.results import ResultError, Summary, SummaryRow
from oodpl.cli.run_dir import (
    RunDir,
    environment_summary,
    read_metrics,
    redact_command,
    scrub_secrets,
)


def start(tmp_path: Path, **config: object) -> RunDir:
    data = {"kind": "sft", "name": "run", "output_dir": str(tmp_path), **config}
    return RunDir.start(config_from_dict(data), command=["oodpl", "train", "x.yaml"])


def test_start_writes_the_layout_and_resolved_config(tmp_path: Path) -> None:
    run = start(tmp_path, train={"lr": 0.5})
    assert run.path == tmp_path / "run"
    assert run.checkpoints_dir.is_dir() and run.results_dir.is_dir()
    resolved = load_config(run.config_path)
    assert resolved.train.lr == 0.5 and resolved.name == "run"
    assert "batch_size: 8" in run.config_path.read_text()  # every key, defaults included


def test_env_json_records_versions_device_seed_command_git(tmp_path: Path) -> None:
    run = start(tmp_path, seed=7)
    env = json.loads(run.env_path.read_text())
    assert env["seed"] == 7
    assert env["command"] == ["oodpl", "train", "x.yaml"]
    assert env["packages"]["torch"] == torch.__version__
    assert env["packages"]["oodpl-cli"] and env["python"].count(".") == 2
    assert env["device"]["accelerator"] in {"cpu", "cuda", "mps"}
    assert env["device"]["cuda_available"] == torch.cuda.is_available()
    assert env["git"] is None or len(env["git"]["commit"]) == 40


def test_env_json_never_holds_credential_values(tmp_path: Path, monkeypatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)  # set by the repository conftest
    config = config_from_dict({"kind": "sft", "name": "s", "output_dir": str(tmp_path)})
    command = ["oodpl", "label", "--api-key", secret, f"--token={secret}", f"x{secret}y"]
    run = RunDir.start(config, command=command)
    text = run.env_path.read_text() + run.config_path.read_text()
    assert secret not in text and "hf_secret_token_value" not in text
    env = json.loads(run.env_path.read_text())
    assert env["environment"] == {"CUDA_VISIBLE_DEVICES": "0"}
    assert env["command"] == ["oodpl", "label", "--api-key", "***", "--token=***", "x***y"]


def test_redaction_helpers(monkeypatch) -> None:
    monkeypatch.setenv("MY_SECRET", "hunter2-long")
    assert scrub_secrets("a hunter2-long b") == "a *** b"
    assert redact_command(["--password", "p", "--lr", "1"]) == ["--password", "***", "--lr", "1"]
    assert "hunter2-long" not in json.dumps(environment_summary(command=["hunter2-long"]))


def test_existing_run_directory_is_not_overwritten_silently(tmp_path: Path) -> None:
    start(tmp_path)
    with pytest.raises(BadInputError, match="run directory already exists") as info:
        start(tmp_path)
    assert "--overwrite" in str(info.value)
    config = config_from_dict({"kind": "sft", "name": "run", "output_dir": str(tmp_path)})
    run = RunDir.start(config, overwrite=True)
    assert not run.metrics_path.exists()


def test_overwrite_refuses_directories_that_are_not_runs(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(BadInputError, match="not an oodpl run"):
        RunDir.create(tmp_path, "run", overwrite=True)
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", ["", "a/b", "../x", ".hidden"])
def test_invalid_run_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadInputError, match="invalid run name"):
        RunDir.create(tmp_path, name)


def test_opening_a_missing_run_directory(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError, match="run directory does not exist"):
        RunDir(tmp_path / "nope")


def test_default_name_has_kind_and_timestamp() -> None:
    name = RunDir.default_name("meta-test")
    assert name.startswith("meta-test-") and len(name) == len("meta-test-") + 15


# ------------------------------------------------------------------------------ metrics.jsonl
def test_metrics_are_appended_one_json_object_per_line(tmp_path: Path) -> None:
    run = start(tmp_path)
    run.log_metrics(0, {"loss": 0.7, "lr": 1e-4}, epoch=0.0)
    run.log_metrics(10, {"loss": torch.tensor(0.5), "n": 3})
    run.log_metrics(10, {"pl_accuracy": 0.6}, phase="eval")
    lines = run.metrics_path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    records = run.read_metrics()
    assert [r["step"] for r in records] == [0, 10, 10]
    assert records[1]["loss"] == pytest.approx(0.5) and records[1]["n"] == 3
    assert records[2]["phase"] == "eval" and records[0]["epoch"] == 0.0
    assert all(isinstance(r["time"], float) for r in records)


@pytest.mark.parametrize(
    ("step", "metrics", "error", "match"),
    [
        (1, {"loss": math.nan}, ValueError, "metric 'loss' at step 1 is not finite"),
        (2, {"loss": float("inf")}, ValueError, "metric 'loss' at step 2 is not finite"),
        (3, {"loss": "low"}, TypeError, "metric 'loss' at step 3 must be a number"),
        (4, {"loss": True}, TypeError, "must be a number"),
        (5, {"step": 1.0}, ValueError, "reserved"),
        (-1, {"loss": 1.0}, ValueError, "step must be an integer >= 0"),
        (1.5, {"loss": 1.0}, ValueError, "step must be an integer >= 0"),
    ],
)
def test_bad_metrics_are_refused_not_written(
    tmp_path: Path, step, metrics, error, match: str
) -> None:
    run = start(tmp_path)
    with pytest.raises(error, match=match):
        run.log_metrics(step, metrics)
    assert not run.metrics_path.exists()


def test_truncated_last_line_is_ignored_but_corruption_inside_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    assert read_metrics(path) == [{"step": 0, "loss": 1.0}]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: invalid JSON"):
        read_metrics(path)


# ------------------------------------------------------------------------ checkpoints, results
def test_checkpoint_dirs(tmp_path: Path) -> None:
    run = start(tmp_path)
    assert run.checkpoint_dir(100) == run.checkpoints_dir / "step-00000100"
    assert run.checkpoint_dir("final").is_dir()
    with pytest.raises(ValueError, match="invalid checkpoint name"):
        run.checkpoint_dir("../escape")


def test_results_are_validated_before_writing(tmp_path: Path) -> None:
    run = start(tmp_path)
    path = run.write_result("summary", Summary(title="S", rows=[SummaryRow("ece", 0.1)]))
    assert json.loads(path.read_text())["type"] == "summary"
    with pytest.raises(ResultError, match="rows"):
        run.write_result("bad", {"type": "summary", "title": "S", "rows": []})
    assert not (run.results_dir / "bad.json").exists()
    with pytest.raises(ValueError, match="invalid result name"):
        run.write_result("../x", Summary(title="S", rows=[SummaryRow("ece", 0.1)]))


def test_metric_meanings_merge_and_validate(tmp_path: Path) -> None:
    run = start(tmp_path)
    run.describe_metrics({"my_metric": "what it means"})
    run.describe_metrics({"other": "another meaning"})
    assert run.metric_meanings() == {"my_metric": "what it means", "other": "another meaning"}
    with pytest.raises(ValueError, match="one non-empty line"):
        run.describe_metrics({"x": "two\nlines"})

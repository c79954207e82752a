"""The ``oodpl`` command: help, version, one-line errors (CliRunner and a real subprocess)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import oodpl.cli.commands as commands
from oodpl.cli.main import oodpl
from oodpl.cli.run_dir import RunDir


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(oodpl, list(args), prog_name="oodpl")


def assert_one_line_error(result: Result, *fragments: str, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------- help, version
@pytest.mark.parametrize("args", [["--help"], ["-h"], []])
def test_group_help_lists_commands_with_one_line_descriptions(runner, args) -> None:
    result = invoke(runner, *args)
    assert result.exit_code == 0
    assert result.output.startswith("Usage: oodpl [OPTIONS] COMMAND [ARGS]...")
    commands_part = result.output.split("Commands:\n", 1)[1]
    listed = {line.split()[0]: line for line in commands_part.splitlines() if line.strip()}
    assert {"config", "report", "env"} <= set(listed)
    for name in listed:
        entry = commands.COMMANDS[name]
        assert entry.short_help in listed[name]
    assert "--debug" in result.output and "--version" in result.output


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from oodpl.cli.main import oodpl;"
        "r = CliRunner().invoke(oodpl, ['--help']); assert r.exit_code == 0;"
        "heavy = {'matplotlib', 'torch', 'transformers'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


def test_version_names_every_package(runner) -> None:
    result = invoke(runner, "--version")
    assert result.exit_code == 0
    for name in ("oodpl-cli 0.1.0", "oodpl-core", "oodpl-models", "oodpl-data"):
        assert name in result.output


def test_unknown_command_suggests_the_closest(runner) -> None:
    assert_one_line_error(invoke(runner, "reprot"), "no such command 'reprot'", "'report'")


# ------------------------------------------------------------------------- bad input: one line
def test_missing_config_file(runner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert_one_line_error(
        invoke(runner, "config", "check", str(missing)), f"config file not found: {missing}"
    )


def test_invalid_key_in_config(runner, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("kind: dpo\ntrain:\n  bta: 0.1\n")
    line = assert_one_line_error(
        invoke(runner, "config", "check", str(path)),
        f"{path}:3: unknown key 'train.bta'",
    )
    assert "did you mean" in line


def test_invalid_override_key(runner, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("kind: dpo\n")
    assert_one_line_error(
        invoke(runner, "config", "show", str(path), "--set", "train.dpo.betaa=1"),
        "--set train.dpo.betaa=1: unknown key 'train.dpo.betaa'",
        "did you mean 'train.dpo.beta'?",
    )


def test_run_dir_that_does_not_exist(runner, tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "nope"
    assert_one_line_error(
        invoke(runner, "report", str(missing)), f"run directory does not exist: {missing}"
    )


def test_usage_errors_are_one_line_too(runner) -> None:
    assert_one_line_error(invoke(runner, "report"), "Missing argument 'RUN_DIR'", "--help")
    assert_one_line_error(invoke(runner, "report", "--bogus", "x"), "--bogus")


def test_debug_shows_the_traceback(runner, tmp_path: Path) -> None:
    result = invoke(runner, "--debug", "config", "check", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1].startswith("error: config file not found")


def test_unexpected_exceptions_are_one_line_with_a_debug_hint(
    runner, sample_run: RunDir, monkeypatch
) -> None:
    import oodpl.cli.report.builder as builder

    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded\nsecond line")

    monkeypatch.setattr(builder, "build_document", broken)
    line = assert_one_line_error(
        invoke(runner, "report", str(sample_run.path)),
        "error: RuntimeError: plotting exploded; second line",
        "oodpl --debug",
        code=1,
    )
    assert line.count("error:") == 1
    debug = invoke(runner, "--debug", "report", str(sample_run.path))
    assert "Traceback" in debug.stderr and "RuntimeError" in debug.stderr


def test_real_subprocess_prints_one_line_and_fails(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("oodpl")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "oodpl.cli.main"]
    path = tmp_path / "run.yaml"
    path.write_text("kind: sft\nmodel:\n  lora:\n    rnak: 4\n")
    env = {k: v for k, v in os.environ.items() if k != "OODPL_DEBUG"}
    done = subprocess.run(
        [*command, "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {path}:4: unknown key 'model.lora.rnak' in section 'model.lora' "
        "(did you mean 'model.lora.rank'?)"
    ]


# --------------------------------------------------------------------------------- commands
def test_report_command_rebuilds_the_report(runner, sample_run: RunDir) -> None:
    result = invoke(runner, "report", str(sample_run.path))
    assert result.exit_code == 0, result.output
    assert f"wrote {sample_run.path / 'report.md'}" in result.stdout
    assert (sample_run.path / "report.html").read_text().count("<img ") == 5


def test_report_strict_fails_on_undocumented_metrics(runner, tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "r")
    run.log_metrics(0, {"mystery": 1.0})
    loose = invoke(runner, "report", str(run.path))
    assert loose.exit_code == 0 and "warning: metrics without a documented meaning" in loose.stderr
    assert_one_line_error(invoke(runner, "report", "--strict", str(run.path)), "mystery")


def test_config_check_show_and_schema(runner, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("kind: dpo\ntrain: {dpo: {beta: 0.05}}\n")
    check = invoke(runner, "config", "check", str(path), "--set", "train.lr=1e-5")
    assert check.exit_code == 0 and check.stdout == f"ok: {path} (kind dpo)\n"
    show = invoke(runner, "config", "show", str(path), "--set", "train.lr=1e-5")
    assert show.exit_code == 0 and "beta: 0.05" in show.stdout and "lr: 1.0e-05" in show.stdout
    schema = invoke(runner, "config", "schema", "train.dpo")
    assert schema.exit_code == 0 and "train.dpo.loss_type" in schema.stdout
    assert "train.lr " not in schema.stdout
    assert_one_line_error(invoke(runner, "config", "schema", "trian"), "no config section")


def test_env_json(runner) -> None:
    result = invoke(runner, "env", "--json")
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["packages"]["oodpl-cli"] == "0.1.0" and "device" in summary


def test_data_command_follows_the_registry(runner, monkeypatch) -> None:
    from oodpl.data import registry

    names = [spec.name for spec in registry.list_sources()]
    result = invoke(runner, "data", "list", "--json")
    assert result.exit_code == 0, result.output
    assert [info["name"] for info in json.loads(result.stdout)] == names
    table = invoke(runner, "data", "list")
    assert table.exit_code == 0 and names[0] in table.stdout

    monkeypatch.setattr(commands, "_module_exists", lambda name: False)
    assert "data" not in invoke(runner, "--help").output
    assert_one_line_error(invoke(runner, "data", "list"), "no such command 'data'")


# ------------------------------------------------------------------------- console helpers
def test_progress_bar_counts_to_the_total_and_track_yields_everything() -> None:
    from rich.console import Console

    from oodpl.cli.progress import progress_bar, track

    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    with progress_bar(4, "training", console=console) as advance:
        for _ in range(4):
            advance()
    assert "training" in console.file.getvalue() and "4/4" in console.file.getvalue()
    assert list(track(range(3), "eval", console=console)) == [0, 1, 2]
    with pytest.raises(ValueError, match="total must be >= 0"), progress_bar(-1, "x"):
        pass


def test_summary_and_metrics_tables() -> None:
    from rich.console import Console

    from oodpl.cli.progress import format_value, metrics_table, summary_table

    assert [format_value(v) for v in (0.123456, 3, None, "x", 1e-5)] == [
        "0.1235",
        "3",
        "–",
        "x",
        "1.000e-05",
    ]
    table = summary_table("t", ["method", "acc"], [["HPL", 0.7], ["OODPL", None]])
    assert [c.justify for c in table.columns] == ["left", "right"]
    with pytest.raises(ValueError, match="row has 1 cells, expected 2"):
        summary_table("t", ["a", "b"], [["x"]])
    console = Console(file=io.StringIO(), width=200)
    console.print(metrics_table({"pl_accuracy": 0.7, "zzz": 1.0}))
    text = console.file.getvalue()
    assert "length-normalised log-likelihood" in text and "undocumented" in text

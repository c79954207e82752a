"""Bad input to ``oodpl train``: one clear line on stderr, a non-zero exit, no traceback unless
``--debug`` (a missing config file, an invalid key, a path that does not exist, a domain without
rows, DeepSpeed options without DeepSpeed installed, and option conflicts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from oodpl.cli.main import oodpl

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
SRC = [Path(__file__).resolve().parents[2] / "src"] + [
    Path(__file__).resolve().parents[3] / "packages" / p / "src"
    for p in ("oodpl-core", "oodpl-models", "oodpl-data")
]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(oodpl, list(args), prog_name="oodpl")


def one_line_error(result: Result, *fragments: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    one_line_error(invoke("train", "rm", "--config", str(missing)), "config file not found", "nope")


def test_invalid_keys_name_the_key_the_file_and_a_suggestion(tmp_path: Path) -> None:
    one_line_error(
        invoke("train", "rm", "--set", "train.lrr=1e-3"), "unknown key 'train.lrr'", "train.lr"
    )
    config = tmp_path / "bad.yaml"
    config.write_text("kind: rm\ntrain:\n  batch_size: 8\n  epochz: 2\n")
    one_line_error(invoke("train", "rm", "--config", str(config)), "bad.yaml:4", "train.epochz")
    config.write_text("kind: dpo\n")
    one_line_error(invoke("train", "rm", "--config", str(config)), "kind 'dpo'", "oodpl train rm")
    one_line_error(invoke("train", "rm", "--set", "kind=dpo"), "conflicts")


def test_paths_that_do_not_exist(tmp_path: Path) -> None:
    ghost = tmp_path / "no-such-run"
    base = ["--config", str(CONFIGS / "dpo.yaml"), "--run-dir", str(tmp_path / "run")]
    line = one_line_error(
        invoke("train", "dpo", *base, "--set", f"train.init_from={ghost}"), "train.init_from"
    )
    assert "does not exist" in line and str(ghost) in line
    one_line_error(invoke("train", "rm", "--resume", str(ghost)), "does not exist", str(ghost))
    line = one_line_error(
        invoke("train", "rm", "--set", "data.source=trl", "--set", f"data.path={ghost}"),
        "data.path",
    )
    assert "does not exist" in line


def test_a_requested_domain_without_rows(tmp_path: Path) -> None:
    data = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": f"q{i}", "chosen": "good answer", "rejected": "bad", "domain": "alpha"}
        for i in range(8)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke(
        "train", "rm", "--run-dir", str(tmp_path / "run"),
        "--set", "data.source=trl", "--set", f"data.path={data}",
        "--set", "data.domains=alpha,beta",
    )  # fmt: skip
    one_line_error(result, "no rows for domain 'beta'", "alpha")
    assert not (tmp_path / "run").exists()  # nothing is written before the data is checked


def test_option_conflicts_and_unsupported_combinations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_line_error(invoke("train", "rm", "--offload"), "--offload needs --deepspeed")
    one_line_error(
        invoke("train", "rm", "--output-dir", str(tmp_path), "--run-dir", str(tmp_path / "x")),
        "either --output-dir or --run-dir",
    )
    one_line_error(invoke("train", "meta", "--deepspeed", "zero2"), "torch backend only")
    fake = tmp_path / "sampling-run"
    fake.mkdir()
    (fake / "config.yaml").write_text("kind: meta-test\ntrain: {meta: {reward_model: x}}\n")
    one_line_error(invoke("train", "meta-test", "--resume", str(fake)), "cannot be resumed")
    one_line_error(invoke("train", "rm", "--resume", str(fake)), "is a 'meta-test' run")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    one_line_error(invoke("train", "rm"), "2-process run needs an explicit run directory")


def _without_deepspeed(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; sys.modules['deepspeed'] = None  # `import deepspeed` raises ImportError\n"
        "from oodpl.cli.main import main; main(sys.argv[1:])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, SRC)), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )


def test_deepspeed_option_without_deepspeed_installed(tmp_path: Path) -> None:
    args = ["train", "rm", "--deepspeed", "zero2", "--run-dir", str(tmp_path / "run")]
    proc = _without_deepspeed(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: DeepSpeed is not installed"), lines
    assert "pip install 'oodpl-models[deepspeed]'" in lines[0]
    assert not (tmp_path / "run").exists()
    debug = _without_deepspeed(*args, "--debug", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == lines[0]


def test_debug_prints_the_traceback(tmp_path: Path) -> None:
    for args in (
        ["--debug", "train", "rm", "--config", str(tmp_path / "nope.yaml")],
        ["train", "rm", "--debug", "--config", str(tmp_path / "nope.yaml")],
    ):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "Traceback" in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("error: config file not found")

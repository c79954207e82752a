"""``oodpl train meta --resume RUN_DIR`` after a crash ([OODPL] Alg. 1, resumable meta-training).

Two runs of the same tiny config (4 outer steps, a checkpoint every 2, one of two training
domains sampled per step, minibatches smaller than the data so the data order matters): one
uninterrupted, one that crashes right after logging step 3 (its last checkpoint is step 2). The
crashed run resumed with ``--resume`` ends with the same reward parameters as the uninterrupted
one, bit for bit, its metrics.jsonl holds every training step once with the same losses, and
the meta-objective evaluations (steps 0 and 4) equal the uninterrupted run's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from oodpl.cli.main import oodpl
from oodpl.cli.run_dir import RunDir, read_metrics

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
STEPS, CRASH = 4, 3
TINY = [
    "--set", "data.domains=books,dvd,kitchen", "--set", "data.held_out=kitchen",
    "--set", "data.sizes.fine_tuning=12", "--set", "data.sizes.preference_train=12",
    "--set", "data.sizes.eval_reference=2", "--set", "data.sizes.eval_preference=4",
    "--set", "train.batch_size=4", "--set", "train.eval_batch_size=16",
    "--set", f"train.max_steps={STEPS}", "--set", "train.save_every=2",
    "--set", "train.meta.domains_per_step=1",
]  # fmt: skip


class Crash(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: str):
    return CliRunner().invoke(oodpl, ["train", "meta", *args], prog_name="oodpl")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "checkpoints" / "final"
    files = sorted(final.rglob("*.safetensors"))
    assert files, f"no safetensors under {final}"
    return {f"{p.relative_to(final)}:{k}": v for p in files for k, v in load_file(str(p)).items()}


def test_a_crashed_meta_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ["--config", str(CONFIGS / "meta.yaml")]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    result = invoke(*config, "--run-dir", str(full), *TINY)
    assert result.exit_code == 0, result.output

    log_metrics = RunDir.log_metrics

    def crash_after_step(self, step, metrics, **kw):  # the process dies after logging CRASH
        record = log_metrics(self, step, metrics, **kw)
        if kw.get("phase", "train") == "train" and step == CRASH:
            raise Crash(f"simulated crash after step {step}")
        return record

    with monkeypatch.context() as patch:
        patch.setattr(RunDir, "log_metrics", crash_after_step)
        result = invoke(*config, "--run-dir", str(crashed), *TINY)
    assert result.exit_code != 0 and "simulated crash after step 3" in result.output, result.output
    checkpoints = crashed / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000002"
    assert not (checkpoints / "final").exists()
    logged = [r["step"] for r in read_metrics(crashed / "metrics.jsonl") if "outer_loss" in r]
    assert logged == [1, 2, 3]  # step 3 was logged, then lost with the process

    result = invoke("--resume", str(crashed))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "from step 2" in result.output

    expected, got = weights(full), weights(crashed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key

    records, reference = (
        read_metrics(crashed / "metrics.jsonl"),
        read_metrics(full / "metrics.jsonl"),
    )
    train = [r for r in records if r.get("phase", "train") == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))  # each step once, in order
    reference_train = [r for r in reference if r.get("phase", "train") == "train"]
    for key in ("outer_loss", "inner_loss", "hypergrad_norm"):
        assert [r[key] for r in train] == [r[key] for r in reference_train], key

    def evaluations(rows):
        return [(r["step"], r["outer_loss"], r["pl_accuracy"]) for r in rows if "pl_accuracy" in r]

    assert evaluations(records) == evaluations(reference)
    assert [step for step, *_ in evaluations(records)] == [0, STEPS]
    assert sorted(r["step"] for r in records if r.get("phase") == "eval") == sorted(
        r["step"] for r in reference if r.get("phase") == "eval"
    )
    assert (crashed / "report.html").is_file()
    assert (crashed / "results" / "00-summary.json").read_text() == (
        full / "results" / "00-summary.json"
    ).read_text()

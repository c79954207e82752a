"""``oodpl train rjs --resume RUN_DIR`` after a crash (METHODS §5, resumable RJS).

A tiny reward model (a short ``rm`` run) scores the samples. Two rjs runs of the same config
(one round of ``STEPS`` optimizer steps on the best-of-2 set, more than one epoch of it, a state
every 2 steps): one uninterrupted, one that dies right after logging step ``CRASH`` (its last
state is step 2, in the middle of the round). The crashed run resumed with ``--resume`` trains
on the saved best-of-n set and ends with the uninterrupted run's final weights bit for bit; its
metrics.jsonl holds every training step once with the same losses, the round record once, the
"before" evaluation once, and the summary equals the uninterrupted run's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from oodpl.cli.main import oodpl
from oodpl.cli.run_dir import read_metrics
from oodpl.models.trainers import _policy_common

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
STEPS, CRASH = 5, 3
TINY = [
    "--set", "data.domains=books,dvd,kitchen", "--set", "data.held_out=kitchen",
    "--set", "data.sizes.fine_tuning=6", "--set", "data.sizes.preference_train=16",
    "--set", "data.sizes.eval_reference=2", "--set", "data.sizes.eval_preference=4",
    "--set", "train.batch_size=4", "--set", "train.eval_batch_size=16",
    "--set", "eval.temperatures=1.0", "--set", "eval.repetitions=1",
    "--set", "eval.max_new_tokens=6",
]  # fmt: skip


class Crash(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(kind: str, *args: str):
    return CliRunner().invoke(oodpl, ["train", kind, *args], prog_name="oodpl")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "checkpoints" / "final"
    files = sorted(final.rglob("*.safetensors"))
    assert files, f"no safetensors under {final}"
    return {f"{p.relative_to(final)}:{k}": v for p in files for k, v in load_file(str(p)).items()}


def test_a_crashed_rjs_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rm = tmp_path / "rm"
    args = ["--config", str(CONFIGS / "rm.yaml"), "--run-dir", str(rm), *TINY]
    result = invoke("rm", *args, "--set", "train.max_steps=2", "--set", "train.save_every=0")
    assert result.exit_code == 0, result.output

    config = ["--config", str(CONFIGS / "rjs.yaml"), *TINY]
    config += ["--set", f"train.rjs.reward_model={rm}", "--set", "train.rjs.n_samples=2"]
    config += ["--set", "train.rjs.generation.max_new_tokens=6"]
    config += ["--set", f"train.max_steps={STEPS}", "--set", "train.save_every=2"]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    result = invoke("rjs", *config, "--run-dir", str(full))
    assert result.exit_code == 0, result.output

    class CrashingLogger(_policy_common.JsonlLogger):  # the process dies after logging CRASH
        def __call__(self, record):
            super().__call__(record)
            if record["step"] == CRASH:
                raise Crash(f"simulated crash after step {CRASH}")

    with monkeypatch.context() as patch:
        patch.setattr(_policy_common, "JsonlLogger", CrashingLogger)
        result = invoke("rjs", *config, "--run-dir", str(crashed))
    assert result.exit_code != 0 and "simulated crash after step 3" in result.output, result.output
    checkpoints = crashed / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000002"
    assert not (checkpoints / "final").exists()

    result = invoke("rjs", "--resume", str(crashed))
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

    def train_steps(rows):
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    assert [step for step, _ in train_steps(records)] == list(range(1, STEPS + 1))
    assert train_steps(records) == train_steps(reference)
    rounds = [r for r in records if r.get("rjs_round")]
    assert len(rounds) == 1 and rounds == [r for r in reference if r.get("rjs_round")]
    evaluations = sorted(r["step"] for r in records if r.get("phase") == "eval")
    assert evaluations == sorted(r["step"] for r in reference if r.get("phase") == "eval")
    assert evaluations == [0, STEPS]
    assert (crashed / "results" / "00-summary.json").read_text() == (
        full / "results" / "00-summary.json"
    ).read_text()

"""``oodpl train ppo --resume RUN_DIR`` after a crash (METHODS §3, resumable PPO).

A tiny reward model (a short ``rm`` run) scores the rollouts. Two ppo runs of the same config
(``ITERATIONS`` rollouts of 4 prompts, 2 PPO epochs of one minibatch each, a state after every
second iteration): one uninterrupted, one that dies right after logging iteration ``CRASH`` (its
last state is after iteration 2, optimizer step 4). The crashed run resumed with ``--resume``
ends with the uninterrupted run's final weights bit for bit; its metrics.jsonl holds every
iteration once with the same values, the "before" evaluation once, and the summary equals the
uninterrupted run's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from oodpl.cli.main import oodpl
from oodpl.cli.run_dir import read_metrics
from oodpl.models.trainers import ppo as ppo_module

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
ITERATIONS, CRASH = 4, 2
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


def test_a_crashed_ppo_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rm = tmp_path / "rm"
    args = ["--config", str(CONFIGS / "rm.yaml"), "--run-dir", str(rm), *TINY]
    result = invoke("rm", *args, "--set", "train.max_steps=2", "--set", "train.save_every=0")
    assert result.exit_code == 0, result.output

    config = ["--config", str(CONFIGS / "ppo.yaml"), *TINY]
    config += ["--set", f"train.ppo.reward_model={rm}", "--set", "train.ppo.rollout_batch_size=4"]
    config += ["--set", "train.ppo.generation.max_new_tokens=6"]
    config += ["--set", f"train.max_steps={ITERATIONS}", "--set", "train.save_every=2"]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    result = invoke("ppo", *config, "--run-dir", str(full))
    assert result.exit_code == 0, result.output

    class CrashingLogger(ppo_module.JsonlLogger):  # the process dies after logging CRASH
        def __call__(self, record):
            super().__call__(record)
            if record["iteration"] == CRASH:
                raise Crash(f"simulated crash after iteration {CRASH}")

    with monkeypatch.context() as patch:
        patch.setattr(ppo_module, "JsonlLogger", CrashingLogger)
        result = invoke("ppo", *config, "--run-dir", str(crashed))
    assert result.exit_code != 0 and "crash after iteration 2" in result.output, result.output
    checkpoints = crashed / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step-00000004"
    assert not (checkpoints / "final").exists()

    result = invoke("ppo", "--resume", str(crashed))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "from step 4" in result.output

    expected, got = weights(full), weights(crashed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key

    records, reference = (
        read_metrics(crashed / "metrics.jsonl"),
        read_metrics(full / "metrics.jsonl"),
    )

    def iterations(rows):
        return [r for r in rows if "policy_loss" in r]

    assert [r["iteration"] for r in iterations(records)] == list(range(ITERATIONS))
    assert iterations(records) == iterations(reference)
    evaluations = sorted(r["step"] for r in records if r.get("phase") == "eval")
    assert evaluations == sorted(r["step"] for r in reference if r.get("phase") == "eval")
    assert evaluations == [0, ITERATIONS]
    assert (crashed / "results" / "00-summary.json").read_text() == (
        full / "results" / "00-summary.json"
    ).read_text()

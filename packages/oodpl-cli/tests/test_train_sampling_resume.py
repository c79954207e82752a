"""``oodpl train rjs|ppo --resume RUN_DIR`` after a crash (resumable RJS, METHODS §5, and PPO,
METHODS §3 baselines).

A tiny reward model (a short ``rm`` run, shared) scores the samples. For each kind, two runs of
the same config (a state every 2 steps; RJS: one round of 5 optimizer steps on the best-of-2 set,
more than one epoch of it; PPO: 4 rollout iterations of 4 prompts, ``train.save_every`` counting
iterations): one uninterrupted, one that dies right after logging a record in the middle of
training (RJS: step 3, its last state is step 2, mid-round; PPO: iteration 2, its last state is
optimizer step 4). The crashed run resumed with ``--resume`` ends with the uninterrupted run's
final weights bit for bit (RJS trains on the saved best-of-n set, no re-sampling); its
metrics.jsonl holds every training record once with the same values, the "before" evaluation
once, and the summary equals the uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from oodpl.cli.main import oodpl
from oodpl.cli.run_dir import read_metrics
from oodpl.models.trainers import _policy_common
from oodpl.models.trainers import ppo as ppo_module

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
TINY = [
    "--set", "data.domains=books,dvd,kitchen", "--set", "data.held_out=kitchen",
    "--set", "data.sizes.fine_tuning=6", "--set", "data.sizes.preference_train=16",
    "--set", "data.sizes.eval_reference=2", "--set", "data.sizes.eval_preference=4",
    "--set", "train.batch_size=4", "--set", "train.eval_batch_size=16",
    "--set", "eval.temperatures=1.0", "--set", "eval.repetitions=1",
    "--set", "eval.max_new_tokens=6",
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One resumable sampling kind: its settings, where its trainer's logger lives, the logged
    record it crashes after, the state it resumes from and its training records."""

    kind: str
    settings: tuple[str, ...]
    total: int  # train.max_steps: optimizer steps (rjs) or rollout iterations (ppo)
    logger_module: ModuleType
    crash_key: str
    crash_at: int
    resumed_step: int
    training: Callable[[list[dict[str, Any]]], list[Any]]
    numbered: Callable[[list[Any]], list[int]]


CASES = [
    Case(
        kind="rjs",
        settings=("train.rjs.n_samples=2", "train.rjs.generation.max_new_tokens=6"),
        total=5,
        logger_module=_policy_common,
        crash_key="step",
        crash_at=3,
        resumed_step=2,
        training=lambda rows: [(r["step"], r["loss"]) for r in rows if "loss" in r],
        numbered=lambda rows: [step for step, _ in rows],
    ),
    Case(
        kind="ppo",
        settings=("train.ppo.rollout_batch_size=4", "train.ppo.generation.max_new_tokens=6"),
        total=4,
        logger_module=ppo_module,
        crash_key="iteration",
        crash_at=2,
        resumed_step=4,
        training=lambda rows: [r for r in rows if "policy_loss" in r],
        numbered=lambda rows: [r["iteration"] + 1 for r in rows],
    ),
]


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


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained reward model run, shared by both kinds."""
    rm = tmp_path_factory.mktemp("rm") / "run"
    args = ["--config", str(CONFIGS / "rm.yaml"), "--run-dir", str(rm), *TINY]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke("rm", *args, "--set", "train.max_steps=2", "--set", "train.save_every=0")
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return rm


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "checkpoints" / "final"
    files = sorted(final.rglob("*.safetensors"))
    assert files, f"no safetensors under {final}"
    return {f"{p.relative_to(final)}:{k}": v for p in files for k, v in load_file(str(p)).items()}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
def test_a_crashed_sampling_run_resumes_to_the_uninterrupted_result(
    case: Case, reward_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ["--config", str(CONFIGS / f"{case.kind}.yaml"), *TINY]
    config += ["--set", f"train.{case.kind}.reward_model={reward_run}"]
    for setting in case.settings:
        config += ["--set", setting]
    config += ["--set", f"train.max_steps={case.total}", "--set", "train.save_every=2"]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    result = invoke(case.kind, *config, "--run-dir", str(full))
    assert result.exit_code == 0, result.output

    class CrashingLogger(case.logger_module.JsonlLogger):  # the process dies after logging it
        def __call__(self, record):
            super().__call__(record)
            if record.get(case.crash_key) == case.crash_at:
                raise Crash(f"simulated crash after {case.crash_key} {case.crash_at}")

    with monkeypatch.context() as patch:
        patch.setattr(case.logger_module, "JsonlLogger", CrashingLogger)
        result = invoke(case.kind, *config, "--run-dir", str(crashed))
    message = f"simulated crash after {case.crash_key} {case.crash_at}"
    assert result.exit_code != 0 and message in result.output, result.output
    checkpoints = crashed / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == f"step-{case.resumed_step:08d}"
    assert not (checkpoints / "final").exists()

    result = invoke(case.kind, "--resume", str(crashed))
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and f"from step {case.resumed_step}" in result.output

    expected, got = weights(full), weights(crashed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key

    records = read_metrics(crashed / "metrics.jsonl")
    reference = read_metrics(full / "metrics.jsonl")
    assert case.numbered(case.training(records)) == list(range(1, case.total + 1))
    assert case.training(records) == case.training(reference)
    rounds = [r for r in records if r.get("rjs_round")]
    assert rounds == [r for r in reference if r.get("rjs_round")]
    assert len(rounds) == (1 if case.kind == "rjs" else 0)
    evaluations = sorted(r["step"] for r in records if r.get("phase") == "eval")
    assert evaluations == sorted(r["step"] for r in reference if r.get("phase") == "eval")
    assert evaluations == [0, case.total]
    assert (crashed / "results" / "00-summary.json").read_text() == (
        full / "results" / "00-summary.json"
    ).read_text()

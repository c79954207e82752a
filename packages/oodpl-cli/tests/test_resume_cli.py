"""``oodpl train rm --resume RUN_DIR`` after a real SIGKILL mid-training.

Three processes: an uninterrupted run; a run killed with SIGKILL as soon as it has written a
checkpoint (checkpoints every 3 steps); and ``--resume`` of the killed run. The resumed run's
metrics.jsonl holds every training step exactly once (records the killed process wrote after its
last checkpoint are dropped and written again) with the same losses as the uninterrupted run,
and its final checkpoint has the same parameters, bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from oodpl.cli.run_dir import read_metrics

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
STEPS = 30
ARGS = [
    "--config", str(CONFIGS / "rm.yaml"),
    "--set", "data.domains=books,dvd", "--set", "data.held_out=[]",
    "--set", "data.sizes.fine_tuning=4", "--set", "data.sizes.preference_train=40",
    "--set", "data.sizes.eval_reference=2", "--set", "data.sizes.eval_preference=8",
    "--set", f"train.max_steps={STEPS}", "--set", "train.save_every=3",
    "--set", "train.batch_size=4",
]  # fmt: skip


def start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "oodpl.cli.main", "train", "rm", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return out


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "checkpoints" / "final"
    return load_file(str(final / "model.safetensors")) | {
        f"value_head.{k}": v for k, v in load_file(str(final / "value_head.safetensors")).items()
    }


def test_sigkilled_run_resumes_without_repeating_steps(tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    uninterrupted = start(*ARGS, "--run-dir", str(full))
    victim = start(*ARGS, "--run-dir", str(killed))
    latest = killed / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while victim.poll() is None and time.monotonic() < deadline:  # kill between checkpoints
        logged = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
        if latest.exists() and logged and logged[-1] % 3:
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "checkpoints" / "final").exists()
    at_kill = int(latest.read_text().strip().removeprefix("step-"))
    written = [r["step"] for r in read_metrics(killed / "metrics.jsonl") if "loss" in r]
    print(f"\nkilled after the step-{at_kill} checkpoint; {len(written)} steps were logged")
    assert 3 <= at_kill < STEPS and at_kill % 3 == 0
    assert written[-1] >= at_kill  # usually > : steps after the checkpoint were logged, then lost

    resumed = start("--resume", str(killed))
    out = finish(resumed)
    finish(uninterrupted)
    assert "run directory" in out

    records = read_metrics(killed / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r.get("phase", "train") == "train"]
    assert train_steps == list(range(1, STEPS + 1))  # each step exactly once, in order
    assert [r["step"] for r in records if r.get("phase") == "eval"] == [0, STEPS]
    reference = read_metrics(full / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses == [r["loss"] for r in reference if "loss" in r]

    expected, got = weights(full), weights(killed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert (killed / "report.html").is_file() and (killed / "results" / "00-summary.json").is_file()

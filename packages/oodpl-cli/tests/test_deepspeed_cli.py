"""``oodpl train rm --deepspeed`` launched on 2 CPU processes against a single-process run.

The 2-process runs use the ``deepspeed`` launcher (``--module oodpl.cli.main``, gloo on CPU,
``DS_ACCELERATOR=cpu``, one thread each) with an explicit ``--run-dir`` that both ranks share;
the single-process run uses the plain torch engine with twice the gradient accumulation, so both
see the same global batch (2 x 1 x 4 pairs vs 1 x 2 x 4) in the same order. The reports must
agree: per-step losses, learning rates and gradient norms, every before/after number of the
results, and the final checkpoint's weights. Only rank 0 writes metrics, results and report.
ZeRO-3 with ``--offload`` also checks the consolidated-weights path of the final checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from oodpl.cli.run_dir import read_metrics

pytestmark = pytest.mark.deepspeed

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
DEEPSPEED = Path(sys.executable).parent / "deepspeed"
ARGS = [
    "train", "rm", "--config", str(CONFIGS / "rm.yaml"),
    "--set", "data.domains=books,dvd,kitchen", "--set", "data.held_out=kitchen",
    "--set", "data.sizes.fine_tuning=4", "--set", "data.sizes.preference_train=32",
    "--set", "data.sizes.eval_reference=2", "--set", "data.sizes.eval_preference=16",
    "--set", "train.max_steps=6", "--set", "train.batch_size=4", "--set", "train.save_every=3",
]  # fmt: skip


# r = w·LN(h) + c: the final LayerNorm's bias β and the head bias c add the same constant
# (w·β + c) to every reward, so they cancel in r_w − r_l and the Bradley–Terry gradient for them
# is zero up to rounding; Adam turns that rounding noise (which differs between 1 and 2
# processes) into full-size updates. They do not change any reported number, so they are
# compared only loosely; every other weight must agree closely.
GAUGE = {"gpt_neox.final_layer_norm.bias", "head.bias"}


def env() -> dict[str, str]:
    out = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(name, None)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_two(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    command = [
        str(DEEPSPEED), "--num_gpus", "2", "--no_local_rank", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "--module", "oodpl.cli.main",
        *ARGS, "--run-dir", str(run_dir), *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def single(run_dir: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "oodpl.cli.main", *ARGS, "--run-dir", str(run_dir)]
    command += ["--set", "train.grad_accum=2"]
    return subprocess.Popen(
        command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-6000:]}"
    return out


def report_numbers(run_dir: Path) -> tuple[list[dict], dict[tuple[str, str], float]]:
    steps = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    rows = json.loads((run_dir / "results" / "00-summary.json").read_text())["rows"]
    return steps, {(r["metric"], r["note"]): r["value"] for r in rows}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "checkpoints" / "final"
    return load_file(str(final / "model.safetensors")) | {
        f"head.{k}": v for k, v in load_file(str(final / "value_head.safetensors")).items()
    }


class SingleRun:
    """The single-process reference run, started in the background (it overlaps the first
    2-process launch) and waited for on first use."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.proc: subprocess.Popen[str] | None = single(run_dir)

    def path(self) -> Path:
        if self.proc is not None:
            wait(self.proc)
            self.proc = None
        return self.run_dir


@pytest.fixture(scope="module")
def single_run(tmp_path_factory: pytest.TempPathFactory):
    run = SingleRun(tmp_path_factory.mktemp("single") / "run")
    yield run
    if run.proc is not None:
        run.proc.kill()
        run.proc.communicate()


def assert_same_report(run_dir: Path, reference: Path, *, weights_atol: float) -> None:
    steps, summary = report_numbers(run_dir)
    ref_steps, ref_summary = report_numbers(reference)
    print(f"\n{run_dir.name}: losses {[round(r['loss'], 6) for r in steps]}")
    print(f"single process: losses {[round(r['loss'], 6) for r in ref_steps]}")
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # rank 0 logged each step once
    for key in ("loss", "lr", "grad_norm", "accuracy"):
        assert [r[key] for r in steps] == pytest.approx([r[key] for r in ref_steps], abs=1e-5)
    assert summary.keys() == ref_summary.keys()
    for key, value in ref_summary.items():
        assert summary[key] == pytest.approx(value, abs=1e-4), key
    got, expected = final_weights(run_dir), final_weights(reference)
    assert got.keys() == expected.keys()
    for key in expected:
        atol = 1e-2 if key in GAUGE else weights_atol
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=atol, msg=key)


def test_two_process_zero2_report_matches_a_single_process_run(
    tmp_path: Path, single_run: SingleRun
) -> None:
    run_dir = tmp_path / "zero2"
    out = wait(launch_two(run_dir, "--deepspeed", "zero2"))
    assert out.count("run directory:") == 1  # printed by rank 0 only
    config = (run_dir / "config.yaml").read_text()
    assert "backend: deepspeed" in config and "zero_stage: 2" in config
    assert json.loads((run_dir / "env.json").read_text())["environment"]["WORLD_SIZE"] == "2"
    state = run_dir / "checkpoints" / "step-00000006"
    assert (state / "engine.json").is_file() and json.loads((state / "engine.json").read_text())[
        "world_size"
    ] == 2
    assert (run_dir / "report.html").is_file()
    assert_same_report(run_dir, single_run.path(), weights_atol=2e-4)


def test_two_process_zero3_offload_consolidates_the_final_checkpoint(
    tmp_path: Path, single_run: SingleRun
) -> None:
    run_dir = tmp_path / "zero3"
    wait(launch_two(run_dir, "--deepspeed", "zero3", "--offload"))
    config = (run_dir / "config.yaml").read_text()
    assert "offload_optimizer: true" in config and "offload_params: true" in config
    assert_same_report(run_dir, single_run.path(), weights_atol=2e-4)

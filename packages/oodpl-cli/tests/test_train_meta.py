"""``oodpl train meta`` and ``oodpl train meta-test`` end to end (tiny preset, synthetic data).

meta ([OODPL] Alg. 1): the meta-objective — the outer loss of policies adapted with ``r_φ``
(K inner RWR steps from θ_init) on the training domains' query sets — is lower after meta-training
than for the initial ``φ`` (full-batch hypergradients at these sizes, so the objective is
deterministic). meta-test (Alg. 2) adapts the policy to the held-out domain with the frozen
meta-learned reward of that run: the reward-weighted regression loss on the selection set falls
below its step-0 value, and the selected step is saved as the final checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from oodpl.cli.main import oodpl
from oodpl.cli.run_dir import read_metrics

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
TINY = [
    "--set", "data.domains=books,dvd,kitchen", "--set", "data.held_out=kitchen",
    "--set", "data.sizes.fine_tuning=32", "--set", "data.sizes.preference_train=32",
    "--set", "data.sizes.eval_reference=4", "--set", "data.sizes.eval_preference=16",
    "--set", "train.eval_batch_size=64",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(kind: str, run_dir: Path, *extra: str) -> None:
    args = ["train", kind, "--config", str(CONFIGS / f"{kind}.yaml"), "--run-dir", str(run_dir)]
    result = CliRunner().invoke(oodpl, [*args, *TINY, *extra], prog_name="oodpl")
    assert result.exit_code == 0, result.output
    assert "without a documented meaning" not in result.output  # every metric is explained


def check_files(run_dir: Path) -> None:
    for name in ("config.yaml", "env.json", "metrics.jsonl", "report.md", "report.html"):
        assert (run_dir / name).is_file(), name


def summary(run_dir: Path) -> dict[tuple[str, str], float]:
    rows = json.loads((run_dir / "results" / "00-summary.json").read_text())["rows"]
    return {(row["metric"], row["note"].split(":")[0]): row["value"] for row in rows}


def test_meta_lowers_the_meta_objective_and_meta_test_adapts(tmp_path: Path) -> None:
    meta = tmp_path / "meta"
    invoke("meta", meta, "--set", "train.max_steps=4")
    check_files(meta)
    records = read_metrics(meta / "metrics.jsonl")
    outer = [r for r in records if r.get("phase") == "eval" and "outer_loss" in r]
    assert [r["step"] for r in outer] == [0, 4]
    assert [r["step"] for r in records if "hypergrad_norm" in r] == [1, 2, 3, 4]
    values = summary(meta)
    before, after = values[("outer_loss/id", "before")], values[("outer_loss/id", "after")]
    print(f"\nmeta-objective (outer loss of adapted policies): {before:.4f} -> {after:.4f}")
    assert after < before - 0.01
    assert (outer[0]["outer_loss"], outer[1]["outer_loss"]) == (before, after)
    final = meta / "checkpoints" / "final"
    assert (final / "value_head.safetensors").is_file() and (final / "adapter").is_dir()
    assert "Key results" in (meta / "report.md").read_text()

    test = tmp_path / "meta-test"
    invoke("meta-test", test, "--set", f"train.meta.reward_model={meta}",
           "--set", "train.max_steps=8", "--set", "train.eval_every=4")  # fmt: skip
    check_files(test)
    values = summary(test)
    start = values[("selection_loss", "step 0")]
    best = next(v for (m, note), v in values.items() if m == "selection_loss" and "best" in note)
    print(f"meta-test RWR selection loss: {start:.4f} -> {best:.4f}")
    assert best < start
    assert (test / "checkpoints" / "final" / "oodpl_config.json").is_file()
    pl = json.loads((test / "results" / "metric-pl_accuracy.json").read_text())
    assert pl["columns"] == ["books", "dvd", "kitchen", "ID mean", "OOD mean"]

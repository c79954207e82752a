"""``oodpl train rm|rjs|ppo`` end to end on a tiny preset and the synthetic benchmark.

The reward model trained here (once per module) is the one RJS and PPO align against. Checks:
the run directory (config, env, metrics, final checkpoint in safetensors, results, report), the
RM's accuracy on held-out evaluation pairs of its training domains rises above the untrained
model's, and RJS and PPO raise the mean reward-model score of responses sampled for evaluation
prompts (the quantity they optimise), with the report holding the generation plot.
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
    "--set", "data.sizes.fine_tuning=24", "--set", "data.sizes.preference_train=64",
    "--set", "data.sizes.eval_reference=6", "--set", "data.sizes.eval_preference=32",
    "--set", "train.batch_size=8", "--set", "train.eval_batch_size=64",
    "--set", "eval.temperatures=1.0", "--set", "eval.repetitions=2",
    "--set", "eval.max_new_tokens=12",
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


def summary(run_dir: Path) -> dict[tuple[str, str], float]:
    rows = json.loads((run_dir / "results" / "00-summary.json").read_text())["rows"]
    return {(row["metric"], row["note"]): row["value"] for row in rows}


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("rm") / "rm"
    invoke("rm", run_dir, "--set", "train.max_steps=16", "--set", "train.save_every=8")
    torch.set_num_threads(threads)
    return run_dir


def test_rm_run_directory_and_accuracy_gain(rm_run: Path) -> None:
    for name in ("config.yaml", "env.json", "metrics.jsonl", "report.md", "report.html"):
        assert (rm_run / name).is_file(), name
    final = rm_run / "checkpoints" / "final"
    assert {"oodpl_config.json", "value_head.safetensors"} <= {p.name for p in final.iterdir()}
    assert (rm_run / "checkpoints" / "latest").read_text().strip() == "step-00000016"
    records = read_metrics(rm_run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 17))
    evals = [r for r in records if r.get("phase") == "eval"]
    assert [r["step"] for r in evals] == [0, 16]
    results = {p.stem for p in (rm_run / "results").glob("*.json")}
    assert {"00-summary", "matrix-accuracy", "calibration-after", "reward-differences"} <= results
    matrix = json.loads((rm_run / "results" / "matrix-accuracy.json").read_text())
    assert matrix["train_domains"] == ["books+dvd"]
    assert matrix["eval_domains"] == ["books", "dvd", "kitchen"]
    calibration = json.loads((rm_run / "results" / "calibration-after.json").read_text())
    assert set(calibration["domains"]) == {"books", "dvd", "kitchen"}
    assert all(0 <= d["ece"] <= 1 for d in calibration["domains"].values())
    values = summary(rm_run)
    before, after = values[("accuracy/id", "before")], values[("accuracy/id", "after")]
    print(f"\nrm accuracy (ID eval pairs): {before:.3f} -> {after:.3f}")
    assert after > before + 0.05
    assert evals[1]["accuracy/id"] == after  # metrics.jsonl and results agree
    report = (rm_run / "report.md").read_text()
    assert "ID/OOD matrix: accuracy" in report and "Calibration" in report


@pytest.mark.parametrize("kind", ["rjs", "ppo"])
def test_alignment_raises_the_mean_reward_of_samples(
    kind: str, rm_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / kind
    settings = {
        "rjs": ["train.max_steps=6", "train.lr=5e-3"],
        "ppo": ["train.max_steps=6", "train.lr=1e-2", "train.ppo.rollout_batch_size=16"],
    }[kind]
    extra = [f"train.{kind}.reward_model={rm_run}", f"train.{kind}.generation.max_new_tokens=12"]
    invoke(kind, run_dir, *(arg for key in [*extra, *settings] for arg in ("--set", key)))
    values = summary(run_dir)
    before, after = values[("mean_reward/id", "before")], values[("mean_reward/id", "after")]
    print(f"\n{kind} mean RM reward of samples (ID prompts): {before:.3f} -> {after:.3f}")
    assert after > before
    for name in ("config.yaml", "env.json", "metrics.jsonl", "report.md", "report.html"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "results" / "generation.json").is_file()
    assert (run_dir / "checkpoints" / "final" / "oodpl_config.json").is_file()
    assert "mean_reward/id" in read_metrics(run_dir / "metrics.jsonl")[-1]
    assert "mean_gold/id" in {metric for metric, _ in values}

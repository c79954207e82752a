"""``oodpl train sft|dpo|hpl`` end to end on a tiny preset and the synthetic benchmark.

Each run goes through the real command (CliRunner, in process): config file + ``--set``, a run
directory with config.yaml, env.json, metrics.jsonl, checkpoints/final, results/*.json,
report.md and report.html; and the trained policy beats the untrained one on the kind's own
objective, measured on held-out evaluation pairs/references: SFT lowers the NLL of the
evaluation references, DPO raises DPORM accuracy and lowers the DPO loss, HPL raises PL accuracy.
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
    "--set", "data.sizes.fine_tuning=32", "--set", "data.sizes.preference_train=48",
    "--set", "data.sizes.eval_reference=12", "--set", "data.sizes.eval_preference=24",
    "--set", "train.batch_size=8", "--set", "train.eval_batch_size=48",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(kind: str, run_dir: Path, *extra: str) -> dict:
    """Run ``oodpl train KIND`` with the tiny settings; returns ``{metric: [before, after]}``
    from the run's metric tables (ID mean column) after checking the run directory."""
    args = ["train", kind, "--config", str(CONFIGS / f"{kind}.yaml"), "--run-dir", str(run_dir)]
    result = CliRunner().invoke(oodpl, [*args, *TINY, *extra], prog_name="oodpl")
    assert result.exit_code == 0, result.output
    assert "without a documented meaning" not in result.output  # every metric is explained
    assert f"run directory: {run_dir}" in result.output
    check_run_directory(run_dir, kind)
    out = {}
    for path in (run_dir / "results").glob("metric-*.json"):
        table = json.loads(path.read_text())
        column = table["columns"].index("ID mean")
        out[table["metric"]] = [table["rows"][label][column] for label in ("before", "after")]
    return out


def check_run_directory(run_dir: Path, kind: str) -> None:
    for name in ("config.yaml", "env.json", "metrics.jsonl", "report.md", "report.html"):
        assert (run_dir / name).is_file(), name
    assert f"kind: {kind}" in (run_dir / "config.yaml").read_text()
    env = json.loads((run_dir / "env.json").read_text())
    assert env["packages"]["torch"] and env["seed"] == 0
    final = run_dir / "checkpoints" / "final"
    assert (final / "oodpl_config.json").is_file()
    assert list(final.rglob("*.safetensors")) and not list(final.rglob("*.bin"))
    records = read_metrics(run_dir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r.get("phase", "train") == "train" and "loss" in r]
    assert train_steps == list(range(1, len(train_steps) + 1)) and train_steps
    assert [r["step"] for r in records if r.get("phase") == "eval"] == [0, train_steps[-1]]
    assert (run_dir / "results" / "00-summary.json").is_file()
    assert "Key results" in (run_dir / "report.md").read_text()
    assert "<html" in (run_dir / "report.html").read_text().lower()


def test_sft_lowers_the_nll_of_held_out_references(tmp_path: Path) -> None:
    metrics = train("sft", tmp_path / "sft", "--set", "train.max_steps=12")
    before, after = metrics["nll"]
    print(f"\nsft NLL (ID eval references): {before:.4f} -> {after:.4f}")
    assert after < before - 0.1


def test_dpo_raises_dporm_accuracy_and_lowers_the_dpo_loss(tmp_path: Path) -> None:
    run_dir, cache = tmp_path / "dpo", tmp_path / "ref-cache"
    metrics = train(
        "dpo",
        run_dir,
        "--set",
        "train.max_steps=12",
        "--set",
        f"train.dpo.reference_cache_dir={cache}",
        "--set",
        "train.packing=always",
    )
    assert len(list(cache.glob("ref_logps-*.safetensors"))) == 1  # reused by a later run
    (acc_before, acc_after), (loss_before, loss_after) = (
        metrics["dporm_accuracy"],
        metrics["dpo_loss"],
    )
    print(f"\ndpo DPORM accuracy {acc_before:.3f} -> {acc_after:.3f}, loss {loss_before:.4f} ->"
          f" {loss_after:.4f}")  # fmt: skip
    assert acc_before == 0.0  # the implicit reward of the reference itself is 0: all ties
    assert loss_before == pytest.approx(0.693147, abs=1e-5)  # log 2
    assert acc_after > 0.6 and loss_after < loss_before
    reference = json.loads((run_dir / "checkpoints" / "reference.json").read_text())["reference"]
    assert (Path(reference) / "oodpl_config.json").is_file()


def test_hpl_raises_pl_accuracy(tmp_path: Path) -> None:
    metrics = train("hpl", tmp_path / "hpl", "--set", "train.max_steps=12")
    before, after = metrics["pl_accuracy"]
    print(f"\nhpl PL accuracy (ID eval pairs): {before:.3f} -> {after:.3f}")
    assert after > before + 0.1

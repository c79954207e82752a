"""``oodpl eval {rm,dpo,policy}`` on runs trained here (tiny preset, synthetic benchmark).

- rm: two reward models trained on different single domains give the ID/OOD matrix (rows =
  trained on, columns = evaluated on), per-model calibration and reward differences; evaluated
  on its own run's data, a model reproduces the after-training numbers of that run exactly.
- dpo: the reference recorded by ``oodpl train dpo`` is found; DPORM accuracy and DPO loss equal
  the run's own; with the policy itself as reference every implicit reward is 0 (all ties).
- policy --generate: gold-reward (and reward-model) scores per temperature and repetition.
- bad input: one line, non-zero exit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from oodpl.cli.main import oodpl

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"
DATA = [
    "--set", "data.sizes.fine_tuning=16", "--set", "data.sizes.preference_train=48",
    "--set", "data.sizes.eval_reference=3", "--set", "data.sizes.eval_preference=24",
    "--set", "train.batch_size=8", "--set", "train.eval_batch_size=64",
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(oodpl, list(args), prog_name="oodpl")


def ok(*args: str) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def table(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "results" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval-runs")
    out = {}
    for domain in ("books", "electronics"):
        out[domain] = root / f"rm-{domain}"
        ok("train", "rm", "--config", str(CONFIGS / "rm.yaml"), "--run-dir", str(out[domain]),
           *DATA, "--set", f"data.domains={domain}", "--set", "data.held_out=[]",
           "--set", "train.max_steps=12")  # fmt: skip
    out["dpo"] = root / "dpo"
    ok("train", "dpo", "--config", str(CONFIGS / "dpo.yaml"), "--run-dir", str(out["dpo"]),
       *DATA, "--set", "data.domains=books,dvd", "--set", "data.held_out=dvd",
       "--set", "train.max_steps=6")  # fmt: skip
    torch.set_num_threads(threads)
    return out


def test_eval_rm_builds_the_id_ood_matrix(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval-rm"
    final = runs["electronics"] / "checkpoints" / "final"  # a checkpoint inside a run directory
    result = ok("eval", "rm", str(runs["books"]), str(final), "--run-dir", str(out), *DATA,
                "--set", "data.domains=books,electronics,kitchen")  # fmt: skip
    assert "rm-books" in result.output and "rm-electronics" in result.output
    matrix = table(out, "matrix-accuracy")
    assert matrix["train_domains"] == ["books", "electronics"]
    assert matrix["eval_domains"] == ["books", "electronics", "kitchen"]
    assert all(0 <= v <= 1 for row in matrix["values"] for v in row)
    for name in ("calibration-rm-books", "calibration-rm-electronics", "reward-differences"):
        assert (out / "results" / f"{name}.json").is_file(), name
    differences = table(out, "reward-differences")["groups"]["rm-books: kitchen"]
    assert len(differences["values"]) == 24 and "n_positive_outliers" in differences["stats"]
    report = (out / "report.md").read_text()
    assert "ID/OOD matrix: accuracy" in report and "accuracy_drop" in report
    # Each model's ID accuracy is its accuracy on its own domain.
    accuracy = table(out, "metric-accuracy")
    assert accuracy["rows"]["rm-books"][0] == matrix["values"][0][0]


def test_eval_rm_on_the_runs_own_data_reproduces_its_numbers(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "again"
    ok("eval", "rm", str(runs["books"]), "--run-dir", str(out))  # data: the run's own config
    trained = table(runs["books"], "metric-accuracy")
    again = table(out, "metric-accuracy")
    assert again["columns"] == trained["columns"] == ["books", "ID mean"]
    assert again["rows"]["rm-books"] == trained["rows"]["after"]
    assert table(out, "metric-bt_loss")["rows"]["rm-books"] == pytest.approx(
        table(runs["books"], "metric-bt_loss")["rows"]["after"], abs=1e-12
    )


def test_eval_dpo_uses_the_recorded_reference(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval-dpo"
    ok("eval", "dpo", str(runs["dpo"]), "--run-dir", str(out))
    for metric in ("dporm_accuracy", "dpo_loss", "pl_accuracy"):
        assert table(out, f"metric-{metric}")["rows"]["dpo"] == pytest.approx(
            table(runs["dpo"], f"metric-{metric}")["rows"]["after"], abs=1e-9
        ), metric
    same = tmp_path / "self-reference"
    ok("eval", "dpo", str(runs["dpo"]), "--reference", str(runs["dpo"]), "--run-dir", str(same))
    assert table(same, "metric-dporm_accuracy")["rows"]["dpo"][:2] == [0.0, 0.0]  # all ties


def test_eval_policy_generate_scores_with_gold_and_reward_model(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    gold = tmp_path / "gold"
    settings = ["--temperatures", "0.5,1.0", "--repetitions", "2", "--set", "eval.max_examples=2",
                "--set", "eval.max_new_tokens=8"]  # fmt: skip
    ok("eval", "policy", str(runs["dpo"]), "--generate", "--run-dir", str(gold), *settings)
    section = table(gold, "generation")
    assert section["metric"] == "gold_reward"
    assert set(section["methods"]["dpo"]) == {"0.5", "1.0"}
    assert all(len(v) == 2 for v in section["methods"]["dpo"].values())
    rm = tmp_path / "rm-scored"
    ok("eval", "policy", str(runs["dpo"]), "--generate", "--reward-model", str(runs["books"]),
       "--run-dir", str(rm), *settings)  # fmt: skip
    assert table(rm, "generation")["metric"] == "mean_reward"
    assert "gold_reward of sampled generations" in (gold / "report.md").read_text()


def one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_eval_bad_input(runs: dict[str, Path], tmp_path: Path) -> None:
    one_line_error(invoke("eval", "rm", str(tmp_path / "ghost")), "does not exist", "ghost")
    one_line_error(invoke("eval", "dpo", str(runs["books"])), "holds a reward_model", "eval rm")
    one_line_error(invoke("eval", "rm", str(runs["dpo"])), "holds a policy", "eval policy")
    policy = runs["dpo"] / "checkpoints" / "final"
    copy = tmp_path / "lonely" / "checkpoints" / "final"
    copy.parent.mkdir(parents=True)
    copy.symlink_to(policy)
    one_line_error(invoke("eval", "dpo", str(copy)), "--reference")
    one_line_error(invoke("eval", "rm", str(runs["books"]), "--generate"), "No such option")
    one_line_error(
        invoke("eval", "policy", str(runs["dpo"]), "--reward-model", str(runs["books"])),
        "add --generate",
    )

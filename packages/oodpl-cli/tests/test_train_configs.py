"""The example configs under configs/train/ validate, and how ``oodpl train`` resolves its
options into a run config (flags, run directory, resume) and the run's data and steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oodpl.cli.commands.train import resolve_train_config
from oodpl.cli.config import load_config
from oodpl.cli.config.schema import RUN_KINDS
from oodpl.cli.errors import BadInputError
from oodpl.cli.pipelines import build as B
from oodpl.cli.pipelines.runs import trim_metrics
from oodpl.cli.run_dir import RunDir, read_metrics

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "train"


@pytest.mark.parametrize("kind", RUN_KINDS)
def test_each_example_config_validates_with_its_kind(kind: str) -> None:
    config = load_config(CONFIGS / f"{kind}.yaml")
    assert config.kind == kind
    assert config.data.source == "synthetic" and config.data.held_out == ["kitchen"]
    assert config.model.preset == "pythia-tiny"
    assert resolve_train_config(kind, CONFIGS / f"{kind}.yaml", ()).kind == kind


def test_flags_become_config_values(tmp_path: Path) -> None:
    config = resolve_train_config(
        "rm", None, ("train.lr=0.5",), deepspeed="zero3", offload=True, run_dir=tmp_path / "r1"
    )
    assert (config.engine.backend, config.engine.zero_stage) == ("deepspeed", 3)
    assert config.engine.offload_optimizer and config.engine.offload_params
    assert (config.output_dir, config.name, config.train.lr) == (str(tmp_path), "r1", 0.5)
    config = resolve_train_config("sft", None, (), deepspeed="zero2", output_dir=tmp_path)
    assert config.engine.zero_stage == 2 and not config.engine.offload_optimizer
    assert config.output_dir == str(tmp_path) and config.name is None


def test_resume_reads_the_run_config_and_refuses_conflicting_options(tmp_path: Path) -> None:
    run = RunDir.start(load_config(None, ["kind=hpl", f"output_dir={tmp_path}", "name=run"]))
    config = resolve_train_config("hpl", None, ("train.max_steps=9",), resume=run.path)
    assert (config.name, config.output_dir, config.train.max_steps) == ("run", str(tmp_path), 9)
    with pytest.raises(BadInputError, match="drop --config"):
        resolve_train_config("hpl", CONFIGS / "hpl.yaml", (), resume=run.path)


def test_split_domains_and_fold_names() -> None:
    data = load_config(None, ["kind=rm", "data.domains=a,b,c", "data.held_out=c"]).data
    assert B.split_domains(data, ["x"]) == (["a", "b"], ["c"])
    held = load_config(None, ["kind=rm", "data.held_out=dvd"]).data
    assert B.split_domains(held, ["books", "dvd", "kitchen"]) == (["books", "kitchen"], ["dvd"])
    fold = load_config(
        None, ["kind=rm", "data.protocol=shp-group-folds", "data.held_out=shp-group2"]
    ).data
    train, test = B.split_domains(fold, [])
    assert test == ["askcarguys", "askculinary", "askdocs"] and len(train) == 15
    every = load_config(None, ["kind=rm", "data.domains=a,b", "data.held_out=a,b"]).data
    with pytest.raises(BadInputError, match="nothing is left to train on"):
        B.split_domains(every, [])


def test_synthetic_run_data_parts_and_steps() -> None:
    config = load_config(
        None,
        [
            "kind=rm", "data.domains=books,dvd", "data.held_out=dvd",
            "data.sizes.fine_tuning=4", "data.sizes.preference_train=10",
            "data.sizes.eval_reference=2", "data.sizes.eval_preference=3",
            "train.batch_size=4", "train.epochs=2",
        ],
    )  # fmt: skip
    data = B.build_data(config)
    assert (data.train_domains, data.test_domains) == (("books",), ("dvd",))
    assert data.counts()["preference_train"] == {"books": 10, "dvd": 10}
    assert len(data.records("preference_train")) == 10  # training domains only
    assert data.gold is not None and data.texts()
    train_prompts = {r.prompt for r in data.records("preference_train")}
    assert not train_prompts & {r.prompt for r in data.eval_preference["books"]}
    assert B.count_steps(config, 10, processes=1) == 4  # ceil(2 * floor(10 / 4))
    assert B.count_steps(config, 10, processes=2) == 2
    with pytest.raises(BadInputError, match="fewer than one global batch"):
        B.count_steps(config, 3, processes=1)
    with pytest.raises(BadInputError, match="no eval_reference records"):
        B.build_data(load_config(None, ["kind=sft", "data.sizes.eval_reference=0"])).require(
            "eval_reference", purpose="test"
        )


def test_trim_metrics_keeps_each_step_once(tmp_path: Path) -> None:
    run = RunDir.start(load_config(None, ["kind=rm", f"output_dir={tmp_path}", "name=r"]))
    run.log_metrics(0, {"accuracy/id": 0.5}, phase="eval")
    for step in range(1, 7):
        run.log_metrics(step, {"loss": 1.0 / step})
    run.log_metrics(6, {"accuracy/id": 0.7}, phase="eval")
    assert trim_metrics(run, 4) == 3
    records = read_metrics(run.metrics_path)
    assert [(r["phase"], r["step"]) for r in records] == [("eval", 0)] + [
        ("train", s) for s in range(1, 5)
    ]
    assert json.loads(run.metrics_path.read_text().splitlines()[-1])["loss"] == 0.25


def test_registry_source_is_split_per_domain_by_prompt(tmp_path: Path) -> None:
    path = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": f"{domain} question {i}", "chosen": f"good {i}", "rejected": f"bad {i}",
         "domain": domain}
        for domain in ("alpha", "beta") for i in range(12)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_config(
        None,
        [
            "kind=rm", "data.source=trl", f"data.path={path}", "data.held_out=beta",
            "data.sizes.fine_tuning=2", "data.sizes.preference_train=6",
            "data.sizes.eval_reference=2", "data.sizes.eval_preference=3",
        ],
    )  # fmt: skip
    data = B.build_data(config)
    assert (data.train_domains, data.test_domains, data.gold) == (("alpha",), ("beta",), None)
    counts = data.counts()
    assert counts["preference_train"] == {"alpha": 6, "beta": 6}
    assert counts["eval_preference"] == {"alpha": 3, "beta": 3}
    train = {r.prompt for r in data.records("preference_train", ("alpha", "beta"))}
    held = {r.prompt for part in ("eval_preference", "eval_reference") for r in
            data.records(part, ("alpha", "beta"))}  # fmt: skip
    assert not train & held

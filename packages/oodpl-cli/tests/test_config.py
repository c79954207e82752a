"""Run-config schemas and the YAML loader: defaults, round trip, every kind of bad input."""

from __future__ import annotations

import dataclasses
import itertools
import textwrap
from pathlib import Path

import pytest
import yaml

from oodpl.cli.config import (
    RUN_KINDS,
    RunConfig,
    config_from_dict,
    dump_config,
    engine_kwargs,
    load_config,
    schema_keys,
)
from oodpl.cli.config.fields import help_of
from oodpl.cli.config.loader import field_types, unwrap_optional
from oodpl.cli.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


# ------------------------------------------------------------------------------- valid configs
def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "kind: sft\n"))
    assert config == RunConfig(kind="sft")
    assert config.model.preset == "pythia-tiny" and config.model.path is None
    assert config.data.sizes.fine_tuning == 1000  # [OODPL] Tab. 4
    assert config.train.dpo.beta == 0.1 and config.engine.backend == "torch"


@pytest.mark.parametrize("kind", [k for k in RUN_KINDS if k not in ("ppo", "rjs", "meta-test")])
def test_every_kind_without_required_inputs_loads(kind: str) -> None:
    assert config_from_dict({"kind": kind}).kind == kind


def test_full_config_round_trips_through_dump(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        kind: meta
        name: meta-kitchen
        model:
          preset: gemma-tiny
          lora: {rank: 4, alpha: 8, dropout: 0.1, targets: [q_proj, v_proj]}
          dtype: bfloat16
        data:
          domains: [book, dvd, electronics, kitchen]
          held_out: [kitchen]
          sizes: {fine_tuning: 100, preference_train: 50}
        train:
          lr: 1e-3          # PyYAML reads this as a string; float fields accept it
          max_steps: 20
          meta: {inner_steps: 2, hypergradient: first_order, radius: 0.02, fd_scheme: forward}
        engine: {backend: deepspeed, zero_stage: 2, offload_optimizer: true, precision: bf16}
        eval: {temperatures: [0.5, 1]}
        """,
    )
    config = load_config(path)
    assert config.train.lr == pytest.approx(1e-3) and isinstance(config.train.lr, float)
    assert config.eval.temperatures == [0.5, 1.0]
    assert config.model.lora.targets == ["q_proj", "v_proj"]
    again = load_config(write(tmp_path, dump_config(config), "resolved.yaml"))
    assert again == config
    assert yaml.safe_load(dump_config(config))["train"]["meta"]["radius"] == 0.02
    assert config.train.meta.fd_scheme == "forward"


def test_model_path_replaces_the_default_preset() -> None:
    config = config_from_dict({"kind": "sft", "model": {"path": "/ckpt"}})
    assert config.model.path == "/ckpt" and config.model.preset is None


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "kind: rm\nmodel:\ntrain:\n"))
    assert config.model == RunConfig(kind="rm").model


# ------------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    ("text", "line", "key", "suggestion"),
    [
        ("kind: sft\ntrian:\n  lr: 0.1\n", 2, "trian", "train"),
        ("kind: sft\ntrain:\n  lrr: 0.1\n", 3, "train.lrr", "train.lr"),
        ("kind: dpo\ntrain:\n  dpo:\n    betta: 0.1\n", 4, "train.dpo.betta", "train.dpo.beta"),
        ("kind: sft\nmodel:\n  lora:\n    rnak: 4\n", 4, "model.lora.rnak", "model.lora.rank"),
        ("kind: sft\nlr: 0.1\n", 2, "lr", "train.lr"),  # right name, wrong section
        ("kind: sft\nbatch_size: 4\n", 2, "batch_size", "train.batch_size"),
    ],
)
def test_unknown_key_names_file_line_full_key_and_closest_valid_key(
    tmp_path: Path, text: str, line: int, key: str, suggestion: str
) -> None:
    error = error_of(tmp_path, text)
    message = str(error)
    assert message.startswith(f"{tmp_path / 'run.yaml'}:{line}: unknown key '{key}'")
    assert f"did you mean '{suggestion}'?" in message
    assert error.key == key and error.line == line
    assert "\n" not in message


def test_unknown_key_without_close_match_has_no_wrong_suggestion(tmp_path: Path) -> None:
    message = str(error_of(tmp_path, "kind: sft\nzzzzqqq: 1\n"))
    assert "unknown key 'zzzzqqq' at the top level" in message and "did you mean" not in message


def test_every_schema_key_with_a_typo_gets_an_error_suggesting_a_valid_key() -> None:
    valid = set(schema_keys())
    exact = 0
    leaves = [k for k in schema_keys() if len(k.rsplit(".", 1)[-1]) >= 4]
    for key in leaves:
        parent, _, leaf = key.rpartition(".")
        typo = leaf[:-1]  # drop the last letter
        data: dict = {"kind": "sft"}
        node = data
        for part in parent.split(".") if parent else []:
            node = node.setdefault(part, {})
        node[typo] = 1
        with pytest.raises(ConfigError) as info:
            config_from_dict(data)
        hint = info.value.hint or ""
        assert hint.startswith("did you mean '"), key
        suggested = hint.split("'")[1]
        assert suggested in valid
        exact += suggested == key
    assert exact == len(leaves)


# --------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: sft\ntrain: {batch_size: eight}", "train.batch_size: expected an integer, got"),
        ("kind: sft\ntrain: {batch_size: 2.5}", "train.batch_size: expected an integer, got"),
        ("kind: sft\ntrain: {lr: true}", "train.lr: expected a number, got boolean True"),
        ("kind: sft\ntrain: {lr: .nan}", "train.lr: expected a finite number"),
        ("kind: sft\ndata: {domains: book}", "data.domains: expected a list of strings"),
        ("kind: sft\ndata: {domains: [book, 3]}", "data.domains[1]: expected a string, got"),
        ("kind: sft\nmodel: 3", "model: expected a mapping (section), got integer 3"),
        ("kind: sft\nmodel: {lora: {enabled: 'yes'}}", "model.lora.enabled: expected a boolean"),
        ("kind: sft\nseed: null", "seed: expected an integer, got null"),
        ("kind: sft\nname: 123", "name: expected a string or null, got integer 123"),
        ("kind: sft\nmodel: {dtype: fp32}", "model.dtype: expected one of 'float32'"),
        ("kind: sft\ntrain: {batch_size: 0}", "train.batch_size: must be >= 1, got 0"),
        ("kind: sft\ntrain: {lr: 0}", "train.lr: must be > 0, got 0.0"),
        ("kind: sft\nmodel: {lora: {dropout: 1.5}}", "model.lora.dropout: must be <= 1"),
        ("kind: sft\neval: {temperatures: [1.0, -1]}", "eval.temperatures: must be > 0"),
        ("kind: sftt", "kind: expected one of 'sft'"),
        ("name: x", "missing required key 'kind'"),
    ],
)
def test_wrong_values_name_the_field_and_the_expected_type(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = str(error_of(tmp_path, text + "\n"))
    assert expected in message, message
    assert message.startswith(str(tmp_path / "run.yaml"))


def test_choice_typo_suggests_the_closest_choice(tmp_path: Path) -> None:
    message = str(error_of(tmp_path, "kind: dpo\ntrain: {dpo: {loss_type: sigmod}}\n"))
    assert "did you mean 'sigmoid'?" in message


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"model": {"preset": "pythia-tiny", "path": "/x"}}, "model.path", "not both"),
        ({"engine": {"zero_stage": 2}}, "engine.zero_stage", "backend: deepspeed"),
        (
            {"engine": {"backend": "deepspeed", "offload_params": True, "zero_stage": 2}},
            "engine.offload_params",
            "zero_stage: 3",
        ),
        (
            {"engine": {"backend": "deepspeed", "offload_optimizer": True}},
            "engine.offload_optimizer",
            "zero_stage 1, 2 or 3",
        ),
        ({"data": {"domains": ["a"], "held_out": ["b"]}}, "data.held_out", "not in data.domains"),
        ({"kind": "ppo"}, "train.ppo.reward_model", "required for kind ppo"),
        ({"kind": "meta-test"}, "train.meta.reward_model", "required for kind meta-test"),
        ({"train": {"dpo": {"loss_type": "robust", "label_smoothing": 0.5}}}, "", "< 0.5"),
        ({"eval": {"judge": {"enabled": True}}}, "eval.judge.model", "needs eval.judge.model"),
    ],
)
def test_cross_field_rules(data: dict, key: str, expected: str) -> None:
    data = {"kind": "sft", **data}
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, source="x.yaml")
    assert expected in str(info.value)
    if key:
        assert info.value.key == key and str(info.value).startswith(f"x.yaml: {key}: ")


# ------------------------------------------------------------------------------- bad files
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, "kind: sft\ntrain:\n  lr: [1, 2\n")
    assert "invalid YAML" in str(error) and error.line is not None and error.line >= 3


def test_duplicate_key_is_an_error_naming_its_line(tmp_path: Path) -> None:
    error = error_of(tmp_path, "kind: sft\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    assert "duplicate key 'train.lr'" in str(error) and error.line == 4


@pytest.mark.parametrize(
    ("text", "expected"), [("", "config is empty"), ("- a\n- b\n", "must be a mapping")]
)
def test_empty_or_non_mapping_file(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in str(error_of(tmp_path, text))


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"kind: sft\nnotes: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# -------------------------------------------------------------------------- schema documentation
def _all_fields(cls: type = RunConfig, prefix: str = ""):
    for field in dataclasses.fields(cls):
        yield f"{prefix}{field.name}", field
        _, inner = unwrap_optional(field_types(cls)[field.name])
        if dataclasses.is_dataclass(inner):
            yield from _all_fields(inner, f"{prefix}{field.name}.")


def test_every_field_has_one_line_help() -> None:
    for key, field in _all_fields():
        text = help_of(field)
        assert text and "\n" not in text, key


def test_schema_keys_lists_sections_and_leaves() -> None:
    keys = schema_keys()
    assert {"kind", "train", "train.dpo", "train.dpo.beta", "model.lora.rank"} <= set(keys)
    assert len(keys) == len(set(keys))


# ----------------------------------------------------------------- the engine config mirror
@pytest.mark.parametrize("backend", ["torch", "deepspeed"])
def test_engine_section_accepts_exactly_what_the_models_engine_accepts(backend: str) -> None:
    from oodpl.models.engine import EngineConfig as ModelsEngineConfig

    for stage, offload_optimizer, offload_params in itertools.product(
        range(4), (False, True), (False, True)
    ):
        engine = {
            "backend": backend,
            "zero_stage": stage,
            "offload_optimizer": offload_optimizer,
            "offload_params": offload_params,
        }
        try:
            config = config_from_dict({"kind": "sft", "engine": engine})
        except ConfigError:
            schema_ok = False
        else:
            schema_ok = True
            kwargs = engine_kwargs(config, max_steps=10)
        try:
            ModelsEngineConfig(**(kwargs if schema_ok else engine))
        except (ValueError, TypeError):
            models_ok = False
        else:
            models_ok = True
        assert schema_ok == models_ok, engine


def test_engine_kwargs_carry_the_training_settings() -> None:
    from oodpl.models.engine import EngineConfig as ModelsEngineConfig

    config = config_from_dict(
        {
            "kind": "dpo",
            "seed": 3,
            "train": {
                "lr": 5e-6,
                "batch_size": 4,
                "grad_accum": 2,
                "warmup_steps": 50,
                "scheduler": "cosine",
                "max_grad_norm": 0,
            },
            "engine": {"precision": "bf16", "grad_checkpointing": True, "optimizer": "foreach"},
        }
    )
    engine = ModelsEngineConfig(**engine_kwargs(config, max_steps=20))
    assert engine.optimizer_impl == "foreach"
    assert (engine.lr, engine.micro_batch_size, engine.grad_accum) == (5e-6, 4, 2)
    assert engine.warmup_steps == 20 and engine.max_steps == 20  # warm-up capped at max_steps
    assert engine.scheduler == "cosine" and engine.max_grad_norm is None and engine.seed == 3
    assert engine.precision == "bf16" and engine.grad_checkpointing
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        engine_kwargs(config, max_steps=0)


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_meta_first_order_options_reach_the_trainer(scheme: str) -> None:
    from types import SimpleNamespace

    from oodpl.cli.pipelines.train_bilevel import meta_train_config

    meta = {"hypergradient": "first_order", "radius": 0.05, "fd_scheme": scheme}
    config = config_from_dict({"kind": "meta", "train": {"meta": meta}})
    trainer_config = meta_train_config(SimpleNamespace(config=config), steps=3)
    assert trainer_config.method == "first_order"
    assert dict(trainer_config.method_options) == {"radius": 0.05, "scheme": scheme}


def test_unknown_fd_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="fd_scheme"):
        config_from_dict({"kind": "meta", "train": {"meta": {"fd_scheme": "backward"}}})

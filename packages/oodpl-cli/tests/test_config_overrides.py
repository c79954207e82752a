"""``--set key=value`` overrides: schema-driven coercion, creation of sections, bad overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.cli.config import config_from_dict, dump_config, load_config, parse_override
from oodpl.cli.errors import ConfigError


def test_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("kind: dpo\ntrain:\n  lr: 0.1\n  dpo: {beta: 0.5}\n", encoding="utf-8")
    config = load_config(path, ["train.lr=1e-4", "train.dpo.beta=0.03", "kind=rm"])
    assert config.train.lr == pytest.approx(1e-4)
    assert config.train.dpo.beta == pytest.approx(0.03)
    assert config.kind == "rm"


@pytest.mark.parametrize(
    ("override", "getter", "expected"),
    [
        ("train.batch_size=16", lambda c: c.train.batch_size, 16),
        ("train.epochs=2", lambda c: c.train.epochs, 2.0),
        ("train.lr=3e-5", lambda c: c.train.lr, 3e-5),
        ("model.lora.enabled=false", lambda c: c.model.lora.enabled, False),
        ("model.lora.enabled=yes", lambda c: c.model.lora.enabled, True),
        ("data.domains=book, dvd", lambda c: c.data.domains, ["book", "dvd"]),
        ("data.domains=[book, dvd]", lambda c: c.data.domains, ["book", "dvd"]),
        ("data.domains=", lambda c: c.data.domains, []),
        ("eval.temperatures=0.5,1", lambda c: c.eval.temperatures, [0.5, 1.0]),
        ("name=123", lambda c: c.name, "123"),  # a string field keeps the text
        ("name=null", lambda c: c.name, None),
        ("notes=a=b", lambda c: c.notes, "a=b"),  # only the first '=' splits
        ("engine={backend: deepspeed, zero_stage: 3}", lambda c: c.engine.zero_stage, 3),
        ("model.attn_implementation=sdpa", lambda c: c.model.attn_implementation, "sdpa"),
    ],
)
def test_override_values_are_coerced_by_the_schema_type(
    override: str, getter, expected: object
) -> None:
    config = config_from_dict({"kind": "sft"}, overrides=[override])
    value = getter(config)
    assert value == expected and type(value) is type(expected)


def test_overrides_alone_build_a_config() -> None:
    config = load_config(None, ["kind=meta", "train.meta.inner_steps=5"])
    assert config.kind == "meta" and config.train.meta.inner_steps == 5


@pytest.mark.parametrize(
    ("override", "expected", "hint"),
    [
        ("train.lrr=1", "--set train.lrr=1: unknown key 'train.lrr'", "train.lr"),
        ("trian.lr=1", "unknown key 'trian.lr'", "train.lr"),
        ("lr=1", "unknown key 'lr'", "train.lr"),
        ("train.batch_size=1.5", "train.batch_size: expected an integer, got text '1.5'", None),
        ("train.lr=fast", "train.lr: expected a number", None),
        ("model.lora.enabled=maybe", "model.lora.enabled: expected a boolean", None),
        ("seed=null", "seed: expected an integer, got text 'null'", None),
        ("kind=dpoo", "kind: expected one of", "dpo"),
    ],
)
def test_bad_overrides_name_the_override_and_key(
    override: str, expected: str, hint: str | None
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"kind": "sft"}, overrides=[override])
    message = str(info.value)
    assert expected in message and f"--set {override}" in message
    if hint:
        assert f"did you mean '{hint}'?" in message


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=3", ".lr=3"])
def test_malformed_override(text: str) -> None:
    with pytest.raises(ConfigError, match="--set expects key=value"):
        parse_override(text)


@settings(max_examples=60, deadline=None)
@given(
    lr=st.floats(min_value=1e-8, max_value=10, allow_nan=False),
    batch=st.integers(min_value=1, max_value=4096),
    beta=st.floats(min_value=1e-6, max_value=100, allow_nan=False),
    domains=st.lists(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8),
        max_size=4,
        unique=True,
    ),
)
def test_set_then_dump_then_load_is_the_identity(
    lr: float, batch: int, beta: float, domains: list[str]
) -> None:
    overrides = [
        f"train.lr={lr!r}",
        f"train.batch_size={batch}",
        f"train.dpo.beta={beta!r}",
        f"data.domains={','.join(domains)}",
    ]
    config = config_from_dict({"kind": "dpo"}, overrides=overrides)
    assert config.train.lr == lr and config.train.batch_size == batch
    assert config.train.dpo.beta == beta and config.data.domains == domains
    import yaml

    assert config_from_dict(yaml.safe_load(dump_config(config))) == config

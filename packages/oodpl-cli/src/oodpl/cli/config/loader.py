"""Load a run config from YAML plus ``--set key=value`` overrides, validated against the schema.

Rules (each violation is a :class:`~oodpl.cli.errors.ConfigError` naming file, line and full
dotted key):

- an unknown key is an error that suggests the closest valid key (``difflib``; siblings first,
  then the same name anywhere in the schema, e.g. top-level ``lr`` -> ``train.lr``);
- a value of the wrong type names the field and the expected type; numbers are checked against
  the field's bounds, choices (``Literal``) suggest the closest valid choice;
- a duplicated key in one mapping is an error (YAML would silently keep the last one);
- ``--set`` values are text coerced by the schema type: ``--set train.lr=1e-4``,
  ``--set data.domains=book,dvd`` (or ``[book, dvd]``), ``--set model.path=null``.

PyYAML reads ``1e-4`` (no dot) as a string; float fields accept such numeric strings.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from oodpl.cli.config.fields import check_bounds
from oodpl.cli.config.schema import RunConfig
from oodpl.cli.errors import ConfigError

T = TypeVar("T")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_NULL_TEXT = {"null", "none", "~"}
_TRUE_TEXT = {"true", "yes", "on", "1"}
_FALSE_TEXT = {"false", "no", "off", "0"}


class CliText(str):
    """A ``--set`` value: raw text, coerced by the target field's type instead of YAML rules."""


@dataclasses.dataclass
class _Origins:
    """Where each dotted key came from: (source name, line or None)."""

    default_source: str
    lines: dict[str, tuple[str, int | None]] = dataclasses.field(default_factory=dict)

    def of(self, key: str) -> tuple[str, int | None]:
        probe = key
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        return self.default_source, None

    def error(self, key: str, message: str, hint: str | None = None) -> ConfigError:
        source, line = self.of(_strip_index(key))
        return ConfigError(message, source=source, key=key, line=line, hint=hint)


def _strip_index(key: str) -> str:
    return re.sub(r"\[\d+\]", "", key)


# --------------------------------------------------------------------------- schema introspection
@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def unwrap_optional(tp: Any) -> tuple[bool, Any]:
    """(True, X) for ``X | None``; (False, tp) otherwise."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def schema_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every valid dotted key of a schema, sections included (``train``, ``train.dpo.beta``...)."""
    keys: list[str] = []
    for name in _fields(cls):
        key = f"{prefix}{name}"
        keys.append(key)
        _, tp = unwrap_optional(field_types(cls)[name])
        if _is_section(tp):
            keys.extend(schema_keys(tp, f"{key}."))
    return keys


def describe_type(tp: Any) -> str:
    """Human wording of a schema type, used in 'expected ...' messages."""
    optional, inner = unwrap_optional(tp)
    if optional:
        return f"{describe_type(inner)} or null"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(tp))
    if get_origin(tp) is list:
        (item,) = get_args(tp)
        plural = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}
        return f"a list of {plural.get(item) or describe_type(item)}"
    if _is_section(tp):
        return "a mapping (section)"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}[
        tp
    ]


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, CliText):
        return "text"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}.get(
        type(value), "mapping" if isinstance(value, Mapping) else type(value).__name__
    )


def suggest_key(key: str, valid_siblings: Iterable[str], prefix: str = "") -> str | None:
    """Closest valid dotted key to an unknown ``prefix + key`` (difflib), or ``None``."""
    siblings = list(valid_siblings)
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f"{prefix}{close[0]}"
    everywhere = schema_keys()
    leaves = {k.rsplit(".", 1)[-1]: k for k in reversed(everywhere)}
    close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.8)
    return leaves[close[0]] if close else None


# ----------------------------------------------------------------------------------- coercion
def _coerce(value: Any, tp: Any, key: str, origins: _Origins) -> Any:
    optional, inner = unwrap_optional(tp)
    if isinstance(value, CliText) and value.strip().lower() in _NULL_TEXT and optional:
        return None
    if value is None:
        if optional:
            return None
        if _is_section(inner):
            return _build(inner, {}, f"{key}.", origins)
        raise origins.error(key, f"{key}: expected {describe_type(tp)}, got null")
    shown = tp
    tp = inner
    if get_origin(tp) is Literal:
        return _coerce_choice(value, tp, key, origins)
    if get_origin(tp) is list:
        return _coerce_list(value, tp, key, origins)
    if _is_section(tp):
        if isinstance(value, CliText):
            value = _parse_yaml_text(value, key, origins)
        if not isinstance(value, Mapping):
            raise origins.error(
                key, f"{key}: expected {describe_type(tp)}, got {_kind_of(value)} {value!r}"
            )
        return _build(tp, value, f"{key}.", origins)
    return _coerce_scalar(value, tp, key, origins, shown)


def _coerce_scalar(value: Any, tp: type, key: str, origins: _Origins, shown: Any) -> Any:
    expected = f"{key}: expected {describe_type(shown)}"
    text = value.strip() if isinstance(value, CliText) else None
    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise origins.error(key, f"{expected}, got {_kind_of(value)} {value!r}", hint="quote it")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE_TEXT | _FALSE_TEXT:
            return text.lower() in _TRUE_TEXT
        raise origins.error(key, f"{expected}, got {_kind_of(value)} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise origins.error(key, f"{expected}, got {_kind_of(value)} {value!r}")
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _NUMBER.match(value.strip()):
            number = float(value.strip())
        if number is None:
            raise origins.error(key, f"{expected}, got {_kind_of(value)} {value!r}")
        if not math.isfinite(number):
            raise origins.error(key, f"{key}: expected a finite number, got {value!r}")
        return number
    raise TypeError(f"unsupported schema type {tp!r} for {key}")  # a schema bug, not user input


def _coerce_choice(value: Any, tp: Any, key: str, origins: _Origins) -> Any:
    choices = get_args(tp)
    candidate = value.strip() if isinstance(value, CliText) else value
    if candidate in choices:
        return choices[choices.index(candidate)]
    close = difflib.get_close_matches(str(candidate), [str(c) for c in choices], n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else None
    raise origins.error(key, f"{key}: expected {describe_type(tp)}, got {value!r}", hint=hint)


def _coerce_list(value: Any, tp: Any, key: str, origins: _Origins) -> list:
    (item_tp,) = get_args(tp)
    if isinstance(value, CliText):
        text = value.strip()
        if text.startswith("["):
            value = _parse_yaml_text(value, key, origins)
        else:
            value = [CliText(part.strip()) for part in text.split(",") if part.strip()]
    if not isinstance(value, list):
        raise origins.error(
            key, f"{key}: expected {describe_type(tp)}, got {_kind_of(value)} {value!r}"
        )
    return [_coerce(item, item_tp, f"{key}[{i}]", origins) for i, item in enumerate(value)]


def _parse_yaml_text(text: str, key: str, origins: _Origins) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise origins.error(key, f"{key}: cannot parse {text!r}: {exc}") from None


# ------------------------------------------------------------------------------------ building
def _build(cls: type[T], data: Mapping[str, Any], prefix: str, origins: _Origins) -> T:
    fields = _fields(cls)
    for name in data:
        if not isinstance(name, str) or name not in fields:
            suggestion = suggest_key(str(name), fields, prefix)
            hint = f"did you mean {suggestion!r}?" if suggestion else None
            where = f"in section '{prefix[:-1]}'" if prefix else "at the top level"
            key = f"{prefix}{name}"
            raise origins.error(key, f"unknown key '{key}' {where}", hint=hint)
    values: dict[str, Any] = {}
    hints = field_types(cls)
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise origins.error(key, f"missing required key '{key}'")
            continue
        value = _coerce(data[name], hints[name], key, origins)
        problem = check_bounds(field, value)
        if problem:
            raise origins.error(key, f"{key}: {problem}")
        values[name] = value
    instance = cls(**values)
    problems = getattr(instance, "problems", None)
    if problems is not None:
        for name, message in problems():
            raise origins.error(f"{prefix}{name}", f"{prefix}{name}: {message}")
    return instance


def _yaml_lines(text: str, source: str) -> dict[str, tuple[str, int | None]]:
    """Dotted key -> (source, 1-based line) for every mapping key; duplicate keys are errors."""
    node = yaml.compose(text)
    lines: dict[str, tuple[str, int | None]] = {}

    def walk(current: yaml.Node, prefix: str) -> None:
        if not isinstance(current, yaml.MappingNode):
            return
        seen: set[str] = set()
        for key_node, value_node in current.value:
            name = str(key_node.value)
            line = key_node.start_mark.line + 1
            if name != "<<" and name in seen:
                raise ConfigError(f"duplicate key '{prefix}{name}'", source=source, line=line)
            seen.add(name)
            lines[f"{prefix}{name}"] = (source, line)
            walk(value_node, f"{prefix}{name}.")

    if node is not None:
        walk(node, "")
    return lines


def parse_override(text: str) -> tuple[str, CliText]:
    """Split ``key=value`` (value may contain '='); errors name the offending ``--set``."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key=value (e.g. train.lr=1e-4), got {text!r}")
    return key, CliText(value)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], origins: _Origins) -> None:
    """Set each dotted ``key=value`` into ``data`` (creating sections), checking the key exists."""
    valid = set(schema_keys())
    for text in overrides:
        key, value = parse_override(text)
        source = f"--set {text}"
        if key not in valid:
            parent, _, leaf = key.rpartition(".")
            siblings = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == parent]
            suggestion = suggest_key(leaf, siblings, f"{parent}." if parent else "")
            hint = f"did you mean {suggestion!r}?" if suggestion else None
            raise ConfigError(f"unknown key '{key}'", source=source, key=key, hint=hint)
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            origins.lines.setdefault(".".join(parts[: depth + 1]), (source, None))
            node = child
        node[parts[-1]] = value
        origins.lines[key] = (source, None)


def config_from_dict(
    data: Mapping[str, Any] | None, *, source: str = "<config>", overrides: Sequence[str] = ()
) -> RunConfig:
    """Validate a plain mapping (e.g. parsed YAML) plus overrides into a :class:`RunConfig`."""
    origins = _Origins(source)
    return _from_mapping(data, source, overrides, origins)


def _from_mapping(data: Any, source: str, overrides: Sequence[str], origins: _Origins) -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"a config must be a mapping of keys, got {_kind_of(data)}", source=source
        )
    mutable = _deep_copy(data)
    apply_overrides(mutable, overrides, origins)
    if not mutable:
        raise ConfigError("config is empty; it needs at least 'kind'", source=source)
    return _build(RunConfig, mutable, "", origins)


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML config file (or none: overrides only) and validate it.

    Raises:
        ConfigError: missing/unreadable file, invalid YAML, unknown key, wrong type or value.
    """
    if path is None:
        return config_from_dict({}, source="--set", overrides=overrides)
    file = Path(path)
    source = str(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {source}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a YAML file: {source}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file is not UTF-8 text: {source}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror}") from None
    try:
        origins = _Origins(source, _yaml_lines(text, source))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {problem}", source=source, line=line) from None
    return _from_mapping(data, source, overrides, origins)


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (schema order, every key present): what runs write."""
    return yaml.safe_dump(
        dataclasses.asdict(config), sort_keys=False, allow_unicode=True, default_flow_style=False
    )

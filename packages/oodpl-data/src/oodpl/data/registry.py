"""Find data sources by name: ``load("shp", path=..., domains=[...])`` and ``list_sources()``.

Every source is registered with its name, aliases, description, domain list, record type,
a hint of the upstream layout ``path`` should point at, the splits it has, its
source-specific options, and its Hugging Face hub id. Loading reads local files; the hub is used
only when ``path`` is ``None`` and the caller passes ``use_hub=True`` (it needs a machine that
can reach the hub; nothing in the test suite does). The synthetic benchmark is registered as
``"synthetic"``: it is generated in memory and takes no ``path``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import fields
from os import PathLike
from pathlib import Path
from typing import Any

from oodpl.data.errors import UnknownDomainError, UnknownSourceError
from oodpl.data.io import Row
from oodpl.data.records import LoadResult, OnInvalid, RecordCollector
from oodpl.data.sources import SOURCE_MODULES
from oodpl.data.sources._common import SourceSpec, hub_rows

__all__ = [
    "SourceSpec",
    "get_source",
    "list_sources",
    "load",
    "register_source",
    "source_info",
]

_SOURCES: dict[str, SourceSpec] = {}
_ALIASES: dict[str, str] = {}
_BUILTINS_LOADED = False
#: Sources generated in memory: ``load`` calls their ``rows`` with ``path=None``.
_PATHLESS: set[str] = set()


def _normalise(name: str) -> str:
    return name.strip().lower()


def register_source(spec: SourceSpec, *, replace: bool = False) -> SourceSpec:
    """Add ``spec`` under its name and aliases; ``replace=True`` to override an existing one."""
    if not isinstance(spec, SourceSpec):
        raise TypeError(f"spec: expected a SourceSpec, got {type(spec).__name__}")
    names = [_normalise(spec.name), *(_normalise(a) for a in spec.aliases)]
    if not replace:
        taken = [n for n in names if n in _SOURCES or n in _ALIASES]
        if taken:
            raise ValueError(f"spec.name: {taken} already registered (pass replace=True)")
    _SOURCES[names[0]] = spec
    for alias in names[1:]:
        _ALIASES[alias] = names[0]
    return spec


def _ensure_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for module in SOURCE_MODULES:
        spec = importlib.import_module(f"oodpl.data.sources.{module}").SPEC
        if _normalise(spec.name) not in _SOURCES:
            register_source(spec)
    if "synthetic" not in _SOURCES:
        register_source(synthetic_spec())
        _PATHLESS.add("synthetic")


def synthetic_spec() -> SourceSpec:
    """The synthetic benchmark (:mod:`oodpl.data.synthetic`) as source ``"synthetic"``.

    It reads no files: ``load("synthetic", domains=[...], split=..., seed=..., n_pref_train=...)``
    generates the records (memoised per configuration); options are the
    :class:`~oodpl.data.synthetic.SyntheticConfig` fields other than ``domains``.
    """
    from oodpl.data.synthetic import (
        BUILTIN_LEXICONS,
        SPLIT_ALIASES,
        SPLITS,
        SyntheticConfig,
        load_synthetic,
    )

    def rows(path: None, collector: RecordCollector, *, domains, split, **config) -> Iterator[Row]:
        label = f"synthetic(seed={config.get('seed')})"
        collector.add_file(label)
        records = load_synthetic(list(domains) or None, split, **config)
        for number, record in enumerate(records, start=1):
            yield Row(label, number, record, unit="record")

    def process(rows: Iterable[Row], collector: RecordCollector, *, split, **_config) -> None:
        for row in rows:
            collector.summary.rows_read += 1
            record = row.data
            texts = {"prompt": record.prompt, "domain": record.domain, "source": record.source}
            if hasattr(record, "chosen"):
                collector.add_preference(
                    row, chosen=record.chosen, rejected=record.rejected, meta=record.meta, **texts
                )
            else:
                collector.add_completion(row, response=record.response, meta=record.meta, **texts)

    return SourceSpec(
        name="synthetic",
        description="synthetic multi-domain benchmark with an exact gold reward, generated in "
        "memory (preferences: pref_train, eval_pref; completions: finetune, eval_reference)",
        domains=tuple(BUILTIN_LEXICONS),
        record_type="preference or completion",
        path_hint="(none: generated from its options, e.g. seed, n_pref_train)",
        hub_id=None,
        splits=SPLITS,
        default_split="pref_train",
        rows=rows,
        process=process,
        options={
            f.name: f.default for f in fields(SyntheticConfig) if f.init and f.name != "domains"
        },
        split_aliases=dict(SPLIT_ALIASES),
    )


def get_source(name: str) -> SourceSpec:
    """The source registered under ``name`` (or an alias); :class:`UnknownSourceError` if none."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    _ensure_builtins()
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    if key not in _SOURCES:
        raise UnknownSourceError(name, _SOURCES)
    return _SOURCES[key]


def list_sources() -> list[SourceSpec]:
    """All registered sources, sorted by name (for ``oodpl data list``)."""
    _ensure_builtins()
    return [_SOURCES[k] for k in sorted(_SOURCES)]


def source_info(spec: SourceSpec) -> dict[str, Any]:
    """A plain dict describing ``spec`` (for tables and JSON output)."""
    return {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "description": spec.description,
        "record_type": spec.record_type,
        "domains": list(spec.domains),
        "splits": list(spec.splits),
        "default_split": spec.default_split,
        "options": dict(spec.options),
        "path_hint": spec.path_hint,
        "hub_id": spec.hub_id,
        "homepage": spec.homepage,
    }


def _check_domains(spec: SourceSpec, domains: Iterable[str] | None) -> tuple[str, ...]:
    if domains is None:
        return ()
    if isinstance(domains, str):
        raise TypeError(f"domains: expected a list of domain names, got the string {domains!r}")
    chosen = tuple(domains)
    if not chosen:
        raise ValueError("domains: an empty list selects nothing; pass None for all domains")
    if spec.open_domains:
        bad = [d for d in chosen if not isinstance(d, str) or not d.strip()]
        if bad:
            raise ValueError(f"domains: expected non-empty names, got {bad}")
        return tuple(dict.fromkeys(chosen))
    unknown = [d for d in chosen if d not in spec.domains]
    if unknown:
        raise UnknownDomainError(spec.name, unknown, spec.domains)
    return tuple(dict.fromkeys(chosen))


def _check_split(spec: SourceSpec, split: str | None) -> str | None:
    if split is None:
        return spec.default_split
    split = spec.split_aliases.get(split, split)
    if not spec.splits:
        raise ValueError(f"split: source {spec.name!r} has no splits; pass split=None")
    if split not in spec.splits:
        raise ValueError(
            f"split: {split!r} is not a split of {spec.name!r}; expected one of {list(spec.splits)}"
        )
    return split


def _check_options(spec: SourceSpec, options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(sorted(spec.options)) or "none"
        raise TypeError(f"{unknown[0]}: unknown option for source {spec.name!r} (options: {known})")
    return {**spec.options, **options}


def load(
    name: str,
    path: str | PathLike[str] | None = None,
    *,
    domains: Iterable[str] | None = None,
    split: str | None = None,
    lenient: bool = False,
    on_invalid: OnInvalid = "error",
    use_hub: bool = False,
    **options: Any,
) -> LoadResult:
    """Load source ``name`` from the upstream layout at ``path``.

    ``domains`` restricts to some of the source's domains (unknown names raise
    :class:`UnknownDomainError`); ``split`` defaults to the source's default split; ``lenient``
    counts malformed rows in ``summary.skipped`` instead of raising; ``on_invalid`` decides
    between raising and dropping (counted) records with empty fields or ``chosen == rejected``;
    ``options`` are the source's own (see ``source_info``). ``use_hub=True`` with ``path=None``
    calls ``datasets.load_dataset(hub_id, ...)`` instead of reading files.
    """
    spec = get_source(name)
    chosen = _check_domains(spec, domains)
    split = _check_split(spec, split)
    opts = _check_options(spec, options)
    collector = RecordCollector(
        spec.name, domains=chosen or None, lenient=lenient, on_invalid=on_invalid
    )
    if spec.name in _PATHLESS:
        if path is not None or use_hub:
            raise ValueError(
                f"path: source {spec.name!r} is generated in memory and reads no files"
            )
        rows = spec.rows(None, collector, domains=chosen, split=split, **opts)
        spec.process(rows, collector, split=split, **opts)
        return collector.result()
    if path is not None:
        if use_hub:
            raise ValueError("use_hub: pass either path (local files) or use_hub=True, not both")
        rows = spec.rows(Path(path).expanduser(), collector, domains=chosen, split=split, **opts)
        spec.process(rows, collector, split=split, **opts)
        return collector.result()
    if not use_hub:
        raise ValueError(
            f"path: required for source {spec.name!r} (expected {spec.path_hint}); "
            "or pass use_hub=True to download from the Hugging Face hub"
        )
    if spec.hub_id is None or spec.hub_requests is None:
        raise ValueError(f"use_hub: source {spec.name!r} has no hub dataset; pass path")
    import datasets

    for kwargs, hint in spec.hub_requests(chosen, split):
        dataset = datasets.load_dataset(spec.hub_id, **kwargs)
        label = f"hf://{spec.hub_id}" + "".join(f" {k}={v}" for k, v in kwargs.items())
        collector.add_file(label)
        spec.process(hub_rows(dataset, label, hint), collector, split=split, **opts)
    return collector.result()

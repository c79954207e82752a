"""``oodpl data``: what the sources of ``oodpl.data.registry`` hold and what a split protocol makes.

- ``oodpl data list``: every registered source with its record type and domains;
- ``oodpl data inspect SOURCE``: records per domain and split, a few example rows, and what the
  loader left out (skipped malformed rows, dropped invalid records, filtered rows) per reason;
- ``oodpl data split SOURCE --protocol P``: the folds of a protocol (METHODS §3 data protocol,
  §4 settings) applied to the source: training / test domains and sizes, and the number of
  prompts shared by a fold's training and test sets (0 by construction: splits are by prompt).

Listed by ``oodpl --help`` only when ``oodpl.data.registry`` is installed. Bad input (a path that
does not exist, an unknown source or domain, a requested domain without records) is one
``error:`` line and exit status 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import click

from oodpl.cli.errors import BadInputError, PathNotFoundError

MAX_DOMAINS_SHOWN = 6


class MissingFilesError(BadInputError):
    """The source's files (or one split's files) are not under ``--path``."""


# ------------------------------------------------------------------------ shared helpers
def source_row(info: dict[str, Any]) -> tuple[str, str, str, str]:
    """(name, record type, domains, description) of one ``source_info`` dict."""
    domains = shorten_list(info.get("domains") or []) or "–"
    return (str(info.get("name", "?")), str(info.get("record_type", "")), domains,
            str(info.get("description", "")))  # fmt: skip


def shorten_list(items: Sequence[Any], limit: int = MAX_DOMAINS_SHOWN) -> str:
    """``"a, b, c"``, or the first ``limit`` items and ``"… (N in all)"``."""
    names = [str(item) for item in items]
    more = f", … ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def shorten_text(text: str, limit: int = 80) -> str:
    """One line of at most ``limit`` characters (whitespace collapsed, ``…`` when cut)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_domains(values: Iterable[str]) -> tuple[str, ...] | None:
    """``--domains a,b --domains c`` -> ``("a", "b", "c")``; nothing given -> ``None``."""
    names = [part.strip() for value in values for part in value.split(",") if part.strip()]
    return tuple(dict.fromkeys(names)) or None


def parse_options(values: Iterable[str]) -> dict[str, Any]:
    """``--option KEY=VALUE`` (repeatable) -> ``{KEY: value}``; the value is read as YAML."""
    import yaml

    options: dict[str, Any] = {}
    for text in values:
        key, sep, raw = (part.strip() for part in text.partition("="))
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise BadInputError(f"--option expects KEY=VALUE (e.g. seed=1), got {text!r}")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            raise BadInputError(f"--option {key}: cannot read the value {raw!r}") from None
        options[key] = tuple(value) if isinstance(value, list) else value
    return options


def get_spec(source: str):
    """The registry entry of ``source``; :class:`BadInputError` for an unknown name."""
    from oodpl.data import registry
    from oodpl.data.errors import UnknownSourceError

    try:
        return registry.get_source(source)
    except UnknownSourceError as err:
        raise BadInputError(str(err)) from err


def where(source: str, path: Path | None, split: str | None = None) -> str:
    """``"source 'shp' at /data/shp (split test)"`` for messages."""
    text = f"source {source!r}" + (f" at {path}" if path is not None else "")
    return text + (f" (split {split})" if split is not None else "")


def require_domains(domains: Sequence[str] | None, counts: Any, place: str) -> None:
    """:class:`BadInputError` naming every requested domain that has no record in ``counts``."""
    empty = [d for d in domains or () if not counts.get(d)]
    if empty:
        found = ", ".join(sorted(d for d in counts if counts[d])) or "none"
        raise BadInputError(
            f"--domains: no records for domain(s) {empty} in {place}; requested domains with "
            f"records: {found}"
        )


def load_records(
    source: str,
    path: Path | None,
    *,
    domains: Sequence[str] | None = None,
    split: str | None = None,
    options: dict[str, Any] | None = None,
    lenient: bool = False,
    allow_empty: bool = False,
):
    """``oodpl.data.registry.load`` with every input problem turned into one clear line.

    A ``path`` that does not exist, an unknown source/domain/option/split, or a malformed file
    raise :class:`BadInputError` (exit status 2) naming the argument or file (missing files:
    :class:`MissingFilesError`); so do a requested domain without records and, unless
    ``allow_empty``, a load that yields nothing. ``lenient`` counts malformed rows and drops
    (and counts) invalid records instead of failing.
    """
    from oodpl.data import registry
    from oodpl.data.errors import DataFormatError, UnknownDomainError, UnknownSourceError

    if path is not None and not Path(path).expanduser().exists():
        raise PathNotFoundError(path, "--path")
    try:
        result = registry.load(
            source, path, domains=domains, split=split, lenient=lenient,
            on_invalid="drop" if lenient else "error", **(options or {}),
        )  # fmt: skip
    except (UnknownSourceError, UnknownDomainError, DataFormatError) as err:
        raise BadInputError(str(err)) from err
    except FileNotFoundError as err:
        raise MissingFilesError(str(err).strip('"')) from err
    except (ValueError, TypeError) as err:
        raise BadInputError(f"{source}: {err}") from err
    if not allow_empty:
        require_domains(domains, result.summary.per_domain, where(source, path, split))
        if not len(result):
            place = where(source, path, split)
            raise BadInputError(f"{place} holds no records{left_out_note(result.summary)}")
    return result


def left_out_note(summary) -> str:
    """``" (left out: filtered other_domain=3, ...)"`` or ``""``."""
    parts = [
        f"{title} {key}={value}"
        for title, counts in (("skipped", summary.skipped), ("dropped", summary.dropped),
                              ("filtered", summary.filtered))
        for key, value in sorted(counts.items())
    ]  # fmt: skip
    return f" (left out: {', '.join(parts)})" if parts else ""


def record_preview(record: Any) -> dict[str, str]:
    """Short texts of a record for example tables."""
    texts = ("chosen", "rejected") if hasattr(record, "chosen") else ("response",)
    preview = {"domain": record.domain, "prompt": shorten_text(record.prompt)}
    return preview | {name: shorten_text(getattr(record, name)) for name in texts}


def echo_tables(tables: Iterable[Any]) -> None:
    from oodpl.cli.progress import print_table

    for each in tables:
        print_table(each)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]):
    from oodpl.cli.progress import summary_table

    return summary_table(title, list(columns), rows)


# ------------------------------------------------------------------------------ commands
path_option = click.option(
    "--path",
    type=click.Path(path_type=Path),
    default=None,
    help="Local file or directory of the source (its upstream layout; see 'oodpl data list').",
)
domains_option = click.option(
    "--domains",
    "domain_values",
    multiple=True,
    metavar="NAMES",
    help="Domains to keep, comma-separated or repeated (default: all).",
)
option_option = click.option(
    "--option",
    "option_values",
    multiple=True,
    metavar="KEY=VALUE",
    help="A source option, e.g. --option seed=1 for synthetic (repeatable).",
)


@click.group("data")
def data() -> None:
    """Data sources: list them, inspect one, preview a split protocol."""


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_sources(as_json: bool) -> None:
    """List the data sources oodpl can load (names usable as data.source in configs)."""
    from oodpl.data import registry

    infos = [registry.source_info(spec) for spec in registry.list_sources()]
    if as_json:
        click.echo(json.dumps(infos, indent=2, default=str))
        return
    rows = [source_row(info) for info in infos]
    echo_tables([table("data sources", ["name", "records", "domains", "description"], rows)])


@data.command("inspect")
@click.argument("source")
@path_option
@domains_option
@click.option("--split", default=None, help="Only this split (default: every split it has).")
@option_option
@click.option("--examples", default=2, show_default=True, type=click.IntRange(0, 50))
@click.option("--strict", is_flag=True, help="Fail on the first malformed row instead of counting.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(
    source: str,
    path: Path | None,
    domain_values: tuple[str, ...],
    split: str | None,
    option_values: tuple[str, ...],
    examples: int,
    strict: bool,
    as_json: bool,
) -> None:
    """Records per domain and split of SOURCE, example rows, and what the loader left out."""
    spec = get_spec(source)
    domains = parse_domains(domain_values)
    options = parse_options(option_values)
    splits: list[str | None] = [split] if split is not None else list(spec.splits) or [None]
    results: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for name in splits:
        try:
            results[name or "records"] = load_records(
                spec.name, path, domains=domains, split=name, options=options,
                lenient=not strict, allow_empty=len(splits) > 1,
            )  # fmt: skip
        except MissingFilesError as err:
            if len(splits) == 1:
                raise
            missing[name or "records"] = err.message
    if not results:
        raise BadInputError(next(iter(missing.values())))
    if not any(len(result) for result in results.values()):
        note = left_out_note(next(iter(results.values())).summary)
        raise BadInputError(f"{where(spec.name, path)} holds no records in any split{note}")
    per_domain = _domain_counts(results)
    require_domains(domains, per_domain, where(spec.name, path))
    if as_json:
        payload = {
            "source": spec.name,
            "path": None if path is None else str(path),
            "splits": {name: result.summary.to_dict() for name, result in results.items()},
            "missing_splits": missing,
            "examples": {
                name: [record_preview(r) for r in _examples(result, examples)]
                for name, result in results.items()
            },
        }
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    echo_tables(_inspect_tables(spec.name, results, per_domain, missing, examples))


def _domain_counts(results: dict[str, Any]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for name, result in results.items():
        for domain, n in result.summary.per_domain.items():
            counts.setdefault(domain, {})[name] = n
    return dict(sorted(counts.items()))


def _examples(result: Any, n: int) -> list[Any]:
    """The first ``n`` records of each domain."""
    taken: dict[str, int] = {}
    chosen = []
    for record in result:
        if taken.get(record.domain, 0) < n:
            taken[record.domain] = taken.get(record.domain, 0) + 1
            chosen.append(record)
    return chosen


def _inspect_tables(source, results, per_domain, missing, examples):
    names = list(results)
    rows = [
        [domain, *(counts.get(name, 0) for name in names), sum(counts.values())]
        for domain, counts in per_domain.items()
    ]
    rows.append(["total", *(len(results[name]) for name in names), sum(map(len, results.values()))])
    kinds = {type(r).__name__.lower() for result in results.values() for r in result[:1]}
    title = f"{source}: {' and '.join(sorted(kinds))} records per domain and split"
    yield table(title, ["domain", *names, "total"], rows)
    left_out = [
        [name, kind, reason, count]
        for name, result in results.items()
        for kind, counts in (
            ("skipped (malformed)", result.summary.skipped),
            ("dropped (invalid)", result.summary.dropped),
            ("filtered", result.summary.filtered),
        )
        for reason, count in sorted(counts.items())
    ]
    left_out += [[name, "missing", message, 0] for name, message in missing.items()]
    files = sum(len(r.summary.files) for r in results.values())
    read = sum(r.summary.rows_read for r in results.values())
    title = f"left out ({read} rows read from {files} file(s))"
    yield table(title, ["split", "kind", "reason", "rows"], left_out or [["–", "none", "–", 0]])
    shown = next(name for name in names if len(results[name]))
    previews = [record_preview(r) for r in _examples(results[shown], examples)]
    if previews:
        columns = list(previews[0])
        yield table(f"examples ({shown})", columns, [[p[c] for c in columns] for p in previews])


# -------------------------------------------------------------------------------- split
#: lodo/shp-groups/dporm are short names of the config's protocol names (METHODS §3, §4).
PROTOCOLS = ("lodo", "leave-one-domain-out", "shp-groups", "shp-group-folds", "dporm",
             "dporm-settings", *(f"dporm-{s}" for s in ("I(a)", "I(b)", "I(c)", "II(a)", "II(b)")),
             "per-domain")  # fmt: skip


def _shortfall(shortfall: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(shortfall.items())) or "–"


def protocol_folds(protocol: str, records: Sequence[Any], domains, id_test_fraction: float):
    """The :class:`~oodpl.data.splits.Fold` list of ``protocol`` (not ``per-domain``)."""
    from oodpl.data import splits

    if protocol in ("lodo", "leave-one-domain-out"):
        names = domains or sorted({r.domain for r in records})
        if len(names) < 2:
            raise BadInputError(f"--protocol {protocol}: needs two or more domains, got {names}")
        return splits.leave_one_domain_out(names, id_test_fraction=id_test_fraction)
    if protocol in ("shp-groups", "shp-group-folds"):
        return splits.shp_group_folds(id_test_fraction=id_test_fraction)
    settings = splits.dporm_settings(id_test_fraction=id_test_fraction or 0.1)
    if protocol in ("dporm", "dporm-settings"):
        return list(settings.values())
    return [settings[protocol.removeprefix("dporm-")]]


@data.command("split")
@click.argument("source")
@path_option
@click.option("--protocol", required=True, type=click.Choice(PROTOCOLS), help="Split protocol.")
@click.option(
    "--held-out", "held_out_values", multiple=True, metavar="NAMES",
    help="Only the folds that hold out these domains (comma-separated or repeated).",
)  # fmt: skip
@domains_option
@click.option("--split", default=None, help="Split of SOURCE to read (default: its default).")
@option_option
@click.option(
    "--add", "extra_values", multiple=True, metavar="NAME[=PATH]",
    help="Pool another source with SOURCE (e.g. the other DPORM datasets); repeatable.",
)  # fmt: skip
@click.option("--seed", default=0, show_default=True, help="Seed of the prompt-group shuffles.")
@click.option(
    "--id-test-fraction", default=0.0, type=click.FloatRange(0.0, 0.99),
    help="Share of training prompts held out as an in-distribution test set (DPORM: 0.1).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def split(
    source, path, protocol, held_out_values, domain_values, split, option_values, extra_values,
    seed, id_test_fraction, as_json,
) -> None:  # fmt: skip
    """Apply a split PROTOCOL to SOURCE: folds with train/test domains and sizes.

    Every split is by prompt, so a fold's training and test sets share no prompt (the table's
    "shared prompts" column checks it).
    """
    from oodpl.data import splits
    from oodpl.data.splits import prompt_key

    domains = parse_domains(domain_values)
    held_out = parse_domains(held_out_values) or ()
    records = list(
        load_records(
            source, path, domains=domains, split=split, options=parse_options(option_values)
        )
    )
    for text in extra_values:
        name, _, extra_path = text.partition("=")
        records += load_records(name.strip(), Path(extra_path) if extra_path else None)
    if protocol == "per-domain":
        prefs = [r for r in records if hasattr(r, "chosen")]
        if not prefs:
            raise BadInputError("--protocol per-domain: needs preference records, got none")
        parts = splits.per_domain_splits(prefs, seed=seed)
        parts = {d: p for d, p in parts.items() if not held_out or d in held_out}
        names = ("fine_tuning", "preference_train", "eval_reference", "eval_preference")
        rows = [
            [d, *(len(getattr(p, n)) for n in names), _shortfall(p.shortfall)]
            for d, p in parts.items()
        ]
        if as_json:
            click.echo(json.dumps({"protocol": protocol, "rows": rows}, indent=2))
            return
        columns = ["domain", *names, "short of 1000/500/500/500 by"]
        echo_tables([table(f"{source}: per-domain parts", columns, rows)])
        return
    folds = protocol_folds(protocol, records, domains, id_test_fraction)
    if held_out:
        held = set(held_out)
        unknown = held - {d for f in folds for d in f.test_domains}
        if unknown:
            raise BadInputError(f"--held-out: no fold of {protocol} holds out {sorted(unknown)}")
        folds = [f for f in folds if held & set(f.test_domains)]
    rows = []
    for fold in folds:
        result = splits.apply_fold(fold, records, seed=seed)
        train_keys = {prompt_key(r.prompt) for r in result.train}
        shared = len(train_keys & {prompt_key(r.prompt) for r in result.all_test})
        tests = ", ".join(
            f"{'+'.join(fold.test_domains) if name == 'test' else name}={len(rs)}"
            for name, rs in result.test.items()
        )
        rows.append(
            {
                "fold": fold.name,
                "train domains": shorten_list(fold.train_domains, 3),
                "train": len(result.train),
                "test": tests or "–",
                "id test": len(result.id_test),
                "dropped": result.n_overlap_dropped,
                "shared prompts": shared,
            }
        )
    if as_json:
        click.echo(json.dumps({"protocol": protocol, "seed": seed, "folds": rows}, indent=2))
        return
    echo_tables([table(f"{source}: {protocol} folds", list(rows[0]), [r.values() for r in rows])])
    empty = sorted({d for fold in folds for d in fold.test_domains} - {r.domain for r in records})
    if empty:
        click.echo(
            f"note: no records for test domain(s) {shorten_list(empty)}; load their sources "
            "with --add NAME=PATH",
            err=True,
        )

"""``oodpl label``: LLM labelling through any OpenAI-compatible endpoint (METHODS §3).

- ``oodpl label pairs SOURCE``: CSG preference pairs from reviews (Amazon reviews, or the
  synthetic benchmark's fine-tuning completions), written in the CSG pairs format that the
  ``csg-pairs`` source reads;
- ``oodpl label judge``: KAG-style win rate of candidate answers against reference answers,
  each item asked twice with the answers swapped ([MORE] App. D).

Both resume: items already in ``--output`` are skipped and every reply the endpoint returned is
kept in ``--cache`` (default ``<output>.cache.jsonl``), so a killed run costs nothing twice.
``--dry-run`` counts calls and estimates tokens without any call; ``--budget N`` stops before
the run's tokens would exceed N. The API key is read from the environment variable named by
``--api-key-env`` and from nowhere else; it is never printed or written.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from oodpl.cli.commands.data import load_records, parse_domains, parse_options, table
from oodpl.cli.errors import BadInputError, CLIError, PathNotFoundError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@click.group("label")
def label() -> None:
    """LLM labelling: CSG preference pairs and KAG win-rate judging (cached, resumable)."""


def endpoint_options(command: Callable) -> Callable:
    """The options every labelling command shares (endpoint, limits, files)."""
    options = [
        click.option("--model", required=True, help="Model name at the endpoint."),
        click.option("--base-url", default=None, help="OpenAI-compatible endpoint URL "
                     "(default: the OpenAI API), e.g. http://127.0.0.1:8000/v1."),
        click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
                     metavar="NAME", help="NAME of the environment variable holding the API key "
                     "(the key itself is never accepted as an argument)."),
        click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
                     help="Requests in flight at once."),
        click.option("--budget", default=None, type=click.IntRange(1), metavar="TOKENS",
                     help="Stop before this run's prompt + completion tokens would exceed TOKENS."),
        click.option("--max-retries", default=5, show_default=True, type=click.IntRange(0, 20)),
        click.option("--output", required=True, type=click.Path(path_type=Path),
                     help="JSONL file the results are appended to (a re-run resumes it)."),
        click.option("--cache", type=click.Path(path_type=Path), default=None,
                     help="Response cache (default: <output>.cache.jsonl)."),
        click.option("--templates", type=click.Path(path_type=Path), default=None,
                     help="Directory overriding the packaged prompt templates by file name."),
        click.option("--prices", type=click.Path(path_type=Path), default=None,
                     help='JSON price table {"model": {"input_per_million": .., '
                     '"output_per_million": ..}} for the cost column.'),
        click.option("--dry-run", is_flag=True, help="Estimate calls and tokens; call nothing."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    ]  # fmt: skip
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def source_options(command: Callable) -> Callable:
    options = [
        click.option("--path", type=click.Path(path_type=Path), default=None,
                     help="Local files of SOURCE (see 'oodpl data list')."),
        click.option("--domains", "domain_values", multiple=True, metavar="NAMES",
                     help="Domains to use, comma-separated or repeated (default: all)."),
        click.option("--split", default=None, help="Split of the source to read."),
        click.option("--option", "option_values", multiple=True, metavar="KEY=VALUE",
                     help="A source option, e.g. --option seed=1 (repeatable)."),
        click.option("--per-domain", default=None, type=click.IntRange(1),
                     help="Use at most this many items per domain."),
        click.option("--limit", default=None, type=click.IntRange(1),
                     help="Use at most this many items in all."),
    ]  # fmt: skip
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


# ------------------------------------------------------------------------------- helpers
def client_config(model, base_url, api_key_env, concurrency, budget, max_retries):
    from oodpl.data.labelling import ClientConfig

    if not _ENV_NAME.fullmatch(api_key_env or ""):
        # never echo the value: it may be a key pasted by mistake
        raise BadInputError(
            "--api-key-env takes the NAME of an environment variable (letters, digits and _), "
            "not a key; export the key, e.g. export OPENAI_API_KEY=..., and pass its name"
        )
    try:
        return ClientConfig(
            model=model, base_url=base_url, api_key_env=api_key_env, max_in_flight=concurrency,
            token_budget=budget, max_retries=max_retries,
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise BadInputError(str(err)) from err


def load_templates(directory: Path | None):
    from oodpl.data.labelling import PromptTemplates

    if directory is not None and not directory.is_dir():
        raise PathNotFoundError(directory, "--templates directory")
    try:
        return PromptTemplates.load(directory)
    except ValueError as err:
        raise BadInputError(f"--templates: {err}") from err


def load_prices(path: Path | None):
    from oodpl.data.labelling import PriceTable

    if path is None:
        return None
    if not path.is_file():
        raise PathNotFoundError(path, "--prices file")
    try:
        return PriceTable.from_file(path)
    except ValueError as err:
        raise BadInputError(f"--prices: {err}") from err


def cache_path(output: Path, cache: Path | None) -> Path:
    return cache if cache is not None else output.with_name(output.name + ".cache.jsonl")


def limit_items(items: list, per_domain: int | None, limit: int | None) -> list:
    """The first ``per_domain`` items of each domain, then the first ``limit`` of those."""
    if per_domain is not None:
        seen: dict[str, int] = {}
        kept = []
        for item in items:
            seen[item.domain] = seen.get(item.domain, 0) + 1
            if seen[item.domain] <= per_domain:
                kept.append(item)
        items = kept
    return items[:limit] if limit is not None else items


def run_labelling(config, output: Path, cache_file: Path, prices, job: Callable[[Any], Any]):
    """Run ``job(client)`` with one clear line for endpoint, key and file problems; files this
    run created are removed again when it fails before writing anything to them."""
    from oodpl.data.labelling import EndpointRefusedError, LabellingClient, ResponseCache
    from oodpl.data.labelling.jsonl import FileInUseError

    new_files = [p for p in (output, cache_file) if not p.exists()]
    try:
        with ResponseCache(cache_file) as cache:
            return job(LabellingClient(config, cache=cache, prices=prices))
    except EndpointRefusedError as err:
        raise CLIError(str(err)) from err
    except FileInUseError as err:
        raise CLIError(f"{err}; wait for it to finish or pick another --output/--cache") from err
    except ValueError as err:  # e.g. the key variable is unset, or a corrupt output file
        raise BadInputError(str(err)) from err
    finally:
        for path in new_files:
            if path.is_file() and path.stat().st_size == 0:
                path.unlink()


def dry_run_summary(requests, config, cache_file: Path, prices, n_items: int, resumed: int):
    from oodpl.data.labelling import ResponseCache, dry_run

    cache = ResponseCache(cache_file) if cache_file.exists() else None
    try:
        report = dry_run(requests, model=config.model, cache=cache, prices=prices)
    finally:
        if cache is not None:
            cache.close()
    fits = None if config.token_budget is None else report.est_total_tokens <= config.token_budget
    return {
        "dry_run": True, "items": n_items, "resumed_items": resumed, **report.to_dict(),
        "fits_budget": fits, "calls_made": 0,
    }  # fmt: skip


def print_summary(title: str, summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    from oodpl.cli.commands.data import echo_tables

    rows = [[key.replace("_", " "), value] for key, value in summary.items()]
    echo_tables([table(title, ["quantity", "value"], rows)])


def usage_summary(report, prices) -> dict[str, Any]:
    ledger = report.ledger
    return {
        "calls_made": ledger.calls, "cached": ledger.cache_hits, "retries": ledger.retries,
        "failed_calls": ledger.failed, "prompt_tokens": ledger.prompt_tokens,
        "completion_tokens": ledger.completion_tokens, "total_tokens": ledger.total_tokens,
        "cost_usd": ledger.cost(prices), "stopped_by": report.stop_reason,
    }  # fmt: skip


def warn_if_stopped(report, n_not_run: int, budget: int | None) -> None:
    if report.stop_reason == "budget":
        click.echo(
            f"warning: stopped before exceeding the token budget of {budget}; {n_not_run} item(s) "
            "not run. Re-run with a larger --budget to finish (answered calls are cached).",
            err=True,
        )


# --------------------------------------------------------------------------------- pairs
def review_items(records: Sequence[Any]):
    """:class:`ReviewItem` s of completions with a sentiment (``meta["sentiment"]``, or the sign
    of ``meta["gold"]`` for the synthetic benchmark); ids ``<domain>-<n>`` count every record of
    the domain in order, so they are stable across runs. Returns (items, n without sentiment)."""
    from oodpl.data.labelling import ReviewItem

    items, counts, unusable = [], {}, 0
    for record in records:
        number = counts[record.domain] = counts.get(record.domain, 0) + 1
        sentiment = record.meta.get("sentiment")
        gold = record.meta.get("gold")
        if sentiment not in ("positive", "negative") and isinstance(gold, (int, float)):
            sentiment = "positive" if gold >= 0 else "negative"
        if sentiment not in ("positive", "negative"):
            unusable += 1
            continue
        review = " ".join(f"{record.prompt} {record.response}".split())
        items.append(ReviewItem(f"{record.domain}-{number - 1}", review, record.domain, sentiment))
    return items, unusable


@label.command("pairs")
@click.argument("source")
@source_options
@endpoint_options
def pairs(source, path, domain_values, split, option_values, per_domain, limit, **endpoint):
    """CSG preference pairs from the reviews of SOURCE (amazon, or synthetic).

    Each review with its sentiment asks the model for a prefix, the review rewritten with it and
    a less positive (or less negative) second review; the more positive one is chosen.
    """
    from oodpl.data.labelling import generate_csg_pairs, pair_requests
    from oodpl.data.labelling.jsonl import read_jsonl

    config = client_config(*(endpoint[k] for k in _CONFIG_KEYS))
    templates, prices = load_templates(endpoint["templates"]), load_prices(endpoint["prices"])
    if split is None and source.strip().lower() == "synthetic":
        split = "finetune"
    records = load_records(
        source, path, domains=parse_domains(domain_values), split=split,
        options=parse_options(option_values),
    )  # fmt: skip
    if hasattr(records[0], "chosen"):
        raise BadInputError(
            f"label pairs needs reviews (completion records); source {source!r} split {split} "
            "holds preference pairs"
        )
    items, unusable = review_items(records)
    items = limit_items(items, per_domain, limit)
    if not items:
        raise BadInputError(f"source {source!r} has no review with a positive/negative sentiment")
    output, cache_file = endpoint["output"], cache_path(endpoint["output"], endpoint["cache"])
    if endpoint["dry_run"]:
        done = {
            line.record.get("meta", {}).get("input_id") for line in read_jsonl(output, strict=False)
        }
        todo = [item for item in items if item.id not in done]
        requests = pair_requests(todo, templates)
        summary = dry_run_summary(requests, config, cache_file, prices, len(items), len(done))
        return print_summary("label pairs (dry run)", summary, endpoint["as_json"])
    report = run_labelling(
        config, output, cache_file, prices,
        lambda client: generate_csg_pairs(items, client, output_path=output, templates=templates,
                                          source=f"csg-llm:{config.model}"),
    )  # fmt: skip
    outcomes = report.to_dict()["outcomes"]
    summary = {
        "items": len(items), "without_sentiment": unusable, "resumed_items": report.resumed_items,
        **outcomes, **usage_summary(report, prices), "output": str(output),
    }  # fmt: skip
    print_summary("label pairs", summary, endpoint["as_json"])
    warn_if_stopped(report, outcomes["not_run"], config.token_budget)


_CONFIG_KEYS = ("model", "base_url", "api_key_env", "concurrency", "budget", "max_retries")


# --------------------------------------------------------------------------------- judge
def items_from_file(path: Path):
    """:class:`JudgeItem` s of a JSONL file: ``question`` (or ``prompt``), ``reference``,
    ``candidate``, optional ``id`` (default ``item-<line>``) and ``domain``."""
    from oodpl.data.labelling import JudgeItem
    from oodpl.data.labelling.jsonl import read_jsonl

    if not path.is_file():
        raise PathNotFoundError(path, "--items file")
    items, lines = [], {}
    try:
        rows = list(read_jsonl(path, strict=True))
    except ValueError as err:
        raise BadInputError(f"--items: {err}") from err
    for line in rows:
        row, at = line.record, f"{path}: line {line.line_number}"
        question = row.get("question", row.get("prompt"))
        values = {"question": question, "reference": row.get("reference"),
                  "candidate": row.get("candidate")}  # fmt: skip
        for name, value in values.items():
            if not isinstance(value, str) or not value.strip():
                shown = "question' or 'prompt" if name == "question" else name
                raise BadInputError(f"{at}: field '{shown}' must be a non-empty string")
        item_id = row.get("id", f"item-{line.line_number}")
        domain = row.get("domain", "")
        if not isinstance(item_id, str) or not item_id or not isinstance(domain, str):
            raise BadInputError(f"{at}: fields 'id' and 'domain' must be strings")
        if item_id in lines:
            raise BadInputError(f"{at}: id {item_id!r} repeats line {lines[item_id]}")
        lines[item_id] = line.line_number
        items.append(JudgeItem(item_id, values["question"], values["reference"],
                               values["candidate"], domain))  # fmt: skip
    return items


def items_from_source(source, path, domain_values, split, option_values):
    """Preference pairs as judge items: reference = chosen, candidate = rejected."""
    from oodpl.data.labelling import JudgeItem

    records = load_records(
        source, path, domains=parse_domains(domain_values), split=split,
        options=parse_options(option_values),
    )  # fmt: skip
    if not hasattr(records[0], "chosen"):
        raise BadInputError(f"label judge --source needs preference pairs; {source!r} has none")
    counts: dict[str, int] = {}
    items = []
    for record in records:
        number = counts[record.domain] = counts.get(record.domain, 0) + 1
        item_id = f"{record.domain}-{number - 1}"
        items.append(
            JudgeItem(item_id, record.prompt, record.chosen, record.rejected, record.domain)
        )
    return items


@label.command("judge")
@click.option("--items", "items_file", type=click.Path(path_type=Path), default=None,
              help="JSONL of {question|prompt, reference, candidate, id?, domain?}.")  # fmt: skip
@click.option("--source", default=None, help="Judge a source's preference pairs instead "
              "(reference = chosen, candidate = rejected).")  # fmt: skip
@source_options
@endpoint_options
def judge(items_file, source, path, domain_values, split, option_values, per_domain, limit,
          **endpoint):  # fmt: skip
    """Win rate of candidates against references, asked twice with positions swapped.

    Both verdicts for the candidate: win; both for the reference: loss; split verdicts: tie.
    """
    from oodpl.data.labelling import judge_requests, judge_win_rate
    from oodpl.data.labelling.judge import read_finished

    if (items_file is None) == (source is None):
        raise BadInputError("label judge: give exactly one of --items FILE or --source NAME")
    config = client_config(*(endpoint[k] for k in _CONFIG_KEYS))
    templates, prices = load_templates(endpoint["templates"]), load_prices(endpoint["prices"])
    if items_file is not None:
        items = items_from_file(items_file)
    else:
        items = items_from_source(source, path, domain_values, split, option_values)
    items = limit_items(items, per_domain, limit)
    output, cache_file = endpoint["output"], cache_path(endpoint["output"], endpoint["cache"])
    if endpoint["dry_run"]:
        try:
            done = read_finished(output, "id", "outcome")
        except ValueError as err:
            raise BadInputError(f"--output: {err}") from err
        todo = [item for item in items if item.id not in done]
        summary = dry_run_summary(
            judge_requests(todo, templates), config, cache_file, prices, len(items), len(done)
        )
        return print_summary("label judge (dry run)", summary, endpoint["as_json"])
    report = run_labelling(
        config, output, cache_file, prices,
        lambda client: judge_win_rate(items, client, templates=templates, output_path=output),
    )  # fmt: skip
    outcomes = report.to_dict()["outcomes"]
    summary = {
        "items": len(items), "resumed_items": report.resumed_items, **outcomes,
        "win_rate": report.win_rate, "win_rate_ties_half": report.win_rate_ties_half,
        "unparseable_calls": report.unparseable_calls, **usage_summary(report, prices),
        "output": str(output),
    }  # fmt: skip
    print_summary("label judge", summary, endpoint["as_json"])
    warn_if_stopped(report, outcomes["not_run"], config.token_budget)

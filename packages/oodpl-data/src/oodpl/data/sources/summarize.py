"""Summarize from Feedback (OpenAI, Stiennon et al. 2020): summary comparisons, three domains.

Upstream layout: ``<root>/comparisons/*.json`` (``batch3.json`` ... ``batch22.json``,
``batch0_cnndm.json``, ``cnndm0.json``, ``cnndm2.json``, ``edit_b2_eval_test.json``), each in
JSON lines ``{"info": {"id", "post", "title", "subreddit", "article", "site"},
"summaries": [{"text", "policy", "note"}, {...}], "choice": 0|1, "worker", "batch",
"split": "train"|"valid1"|"valid2", "extra": {...}}``; the ``openai/summarize_from_feedback``
parquet export has the same columns.

Domains: ``tldr`` (Reddit TL;DR: ``info.post``/``info.subreddit`` set, ids ``t3_...``), ``cnn`` and
``dailymail`` (``info.site`` is ``"cnn"`` / ``"dailymail"``; ``info.article`` set).
Split: ``train`` keeps rows with ``split == "train"``, ``validation`` keeps ``valid1`` and
``valid2``, ``valid1``/``valid2`` keep one, ``all`` keeps every row; others count as
``filtered["other_split"]``.

Prompt templates (ours, close to the paper's):
``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"`` for Reddit and
``"TITLE: {title}\\nARTICLE: {article}\\nTL;DR:"`` for news (``TITLE:`` line only when a title
exists). ``chosen = summaries[choice].text``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from oodpl.data.io import Row
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import (
    SourceSpec,
    data_files,
    expect_mapping,
    file_rows,
    get,
    process_each,
)

SUMMARIZE_DOMAINS = ("tldr", "cnn", "dailymail")
SPLITS = ("train", "validation", "valid1", "valid2", "all")
_SPLIT_VALUES = {
    "train": {"train"},
    "validation": {"valid1", "valid2"},
    "valid1": {"valid1"},
    "valid2": {"valid2"},
}
_SITES = {"cnn": "cnn", "dailymail": "dailymail", "daily mail": "dailymail", "dm": "dailymail"}
SOURCE = "summarize"


def rows(
    path: Path,
    collector: RecordCollector,
    *,
    domains: tuple[str, ...],
    split: str | None,
    **_options: object,
) -> Iterable[Row]:
    files = data_files(
        path,
        [
            "comparisons/*.json",
            "comparisons/*.json.gz",
            "*.json",
            "*.jsonl",
            "*.jsonl.gz",
            f"comparisons/{split}-*.parquet",
            f"data/{split}-*.parquet",
            f"{split}-*.parquet",
            "comparisons/*.parquet",
            "*.parquet",
        ],
        what="summarize-from-feedback comparison files",
    )
    return file_rows([(f, None) for f in files], collector)


def domain_of(row: Row, info: Mapping) -> str:
    """``tldr``, ``cnn`` or ``dailymail`` from ``info.site``, else the Reddit fields / id prefix."""
    site = get(row, info, "site", str, path="info", optional=True)
    if site is not None:
        try:
            return _SITES[site.strip().lower()]
        except KeyError:
            raise row.error(
                f"unknown site {site!r} (expected cnn or dailymail)",
                field="info.site",
                reason="unknown_domain",
            ) from None
    ident = info.get("id")
    if (
        info.get("post") is not None
        or info.get("subreddit") is not None
        or (isinstance(ident, str) and ident.startswith("t3_"))
    ):
        return "tldr"
    if isinstance(ident, str):
        for prefix, domain in (("cnn", "cnn"), ("dm", "dailymail"), ("dailymail", "dailymail")):
            if ident.lower().startswith(prefix):
                return domain
    raise row.error(
        "cannot tell the domain: no site, post, subreddit or known id prefix",
        field="info.site",
        reason="unknown_domain",
    )


def _prompt(row: Row, info: Mapping, domain: str) -> str:
    title = get(row, info, "title", str, path="info", optional=True)
    if domain == "tldr":
        post = get(row, info, "post", str, path="info")
        subreddit = get(row, info, "subreddit", str, path="info", optional=True)
        head = f"SUBREDDIT: r/{subreddit}\n" if subreddit else ""
        head += f"TITLE: {title}\n" if title else ""
        return f"{head}POST: {post}\nTL;DR:"
    article = get(row, info, "article", str, path="info")
    head = f"TITLE: {title}\n" if title else ""
    return f"{head}ARTICLE: {article}\nTL;DR:"


def process(
    rows: Iterable[Row], collector: RecordCollector, *, split: str | None = "train"
) -> None:
    keep = None if split in (None, "all") else _SPLIT_VALUES[split]

    def handle(row: Row) -> None:
        data = expect_mapping(row)
        info = get(row, data, "info", Mapping)
        summaries = get(row, data, "summaries", list)
        if len(summaries) != 2:
            raise row.error(
                f"expected 2 summaries, got {len(summaries)}", field="summaries", reason="bad_value"
            )
        texts = [get(row, s, "text", str, path=f"summaries[{i}]") for i, s in enumerate(summaries)]
        choice = get(row, data, "choice", int)
        if choice not in (0, 1):
            raise row.error(f"expected 0 or 1, got {choice!r}", field="choice", reason="bad_value")
        row_split = get(row, data, "split", str)
        domain = domain_of(row, info)
        if keep is not None and row_split not in keep:
            collector.filter("other_split")
            return
        meta = {
            "id": info.get("id"),
            "policy_chosen": summaries[choice].get("policy"),
            "policy_rejected": summaries[1 - choice].get("policy"),
            "worker": data.get("worker"),
            "batch": data.get("batch"),
            "split": row_split,
        }
        if domain == "tldr":
            meta["subreddit"] = info.get("subreddit")
        if not collector.wants(domain):
            return
        collector.add_preference(
            row,
            prompt=_prompt(row, info, domain),
            chosen=texts[choice],
            rejected=texts[1 - choice],
            domain=domain,
            source=SOURCE,
            meta=meta,
        )

    process_each(rows, collector, handle)


def hub_requests(domains: tuple[str, ...], split: str | None):
    if split in (None, "all"):
        return [({"name": "comparisons", "split": s}, None) for s in ("train", "validation")]
    hub_split = "train" if split == "train" else "validation"
    return [({"name": "comparisons", "split": hub_split}, None)]


SPEC = SourceSpec(
    name=SOURCE,
    description="Summarize from Feedback comparisons: Reddit TL;DR, CNN and DailyMail domains",
    domains=SUMMARIZE_DOMAINS,
    record_type="preference",
    path_hint="<root>/comparisons/*.json (openaipublic summarize-from-feedback/dataset)",
    hub_id="openai/summarize_from_feedback",
    splits=SPLITS,
    default_split="train",
    rows=rows,
    process=process,
    hub_requests=hub_requests,
    aliases=("summarize-from-feedback", "summarize_from_feedback"),
    homepage="https://github.com/openai/summarize-from-feedback",
)

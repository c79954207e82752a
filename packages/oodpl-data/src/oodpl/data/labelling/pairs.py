"""CSG preference-pair generation with an LLM (METHODS §3 "LLM labelling" (a)).

Given a domain review and its sentiment, the model picks (or adds) a prefix, rewrites the review
to start with it, writes a second review with the same prefix that is less positive (for a
positive review) or less negative (for a negative one), and states which is more positive. The
reply is parsed strictly (:func:`~oodpl.data.labelling.parsing.parse_pair_reply`).

The preferred response is the more positive one (controlled *positive* sentiment generation):
``Preference(prompt=prefix, chosen=continuation of the more positive review, rejected=the
other continuation)``. A reply whose stated direction contradicts the instruction (a positive
review whose "less positive" rewrite is called more positive, or the reverse for a negative one)
is counted as ``inconsistent`` and dropped unless ``keep_inconsistent``; an unparseable reply is
counted and dropped. Rows are appended (fsync'd) to a JSONL file in the record format the "csg"
loader reads, one object per line: ``{"prompt", "chosen", "rejected", "domain", "source",
"meta"}``, ``meta.input_id`` naming the input item; a re-run skips input ids already written.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from oodpl.core.records import Completion, Preference

from .accounting import UsageLedger
from .client import ChatRequest, ChatResult, LabellingClient
from .jsonl import AppendOnlyJsonl, read_jsonl
from .parsing import parse_pair_reply
from .templates import PromptTemplates

DEFAULT_PAIR_PARAMS: Mapping[str, Any] = {"temperature": 0.7, "max_tokens": 400}
PAIR_OUTCOMES = ("written", "unparseable", "inconsistent", "error", "not_run")


@dataclass(frozen=True)
class ReviewItem:
    """One input review with its sentiment ("positive" or "negative")."""

    id: str
    review: str
    domain: str
    sentiment: Literal["positive", "negative"]

    def __post_init__(self) -> None:
        for name in ("id", "review", "domain"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"ReviewItem.{name} must be a non-empty string, got {value!r}")
        if self.sentiment not in ("positive", "negative"):
            raise ValueError(
                f"ReviewItem.sentiment must be 'positive' or 'negative', got {self.sentiment!r}"
            )


def review_items_from_completions(completions: Iterable[Completion]) -> list[ReviewItem]:
    """Reviews ``prompt + " " + response`` with the sentiment given by the sign of
    ``meta["gold"]`` (synthetic benchmark completions carry it); ids ``<domain>-<n>``."""
    items = []
    for number, completion in enumerate(completions):
        gold = completion.meta.get("gold")
        if not isinstance(gold, (int, float)):
            raise ValueError(f"completion {number} has no numeric meta['gold'] to set sentiment")
        items.append(
            ReviewItem(
                id=f"{completion.domain}-{number}",
                review=f"{completion.prompt} {completion.response}",
                domain=completion.domain,
                sentiment="positive" if gold >= 0 else "negative",
            )
        )
    return items


def pair_requests(
    items: Sequence[ReviewItem],
    templates: PromptTemplates | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[ChatRequest]:
    templates = templates if templates is not None else PromptTemplates.load()
    params = dict(DEFAULT_PAIR_PARAMS if params is None else params)
    return [
        ChatRequest(
            templates.pair_messages(item.domain, item.sentiment, item.review), params, tag=item.id
        )
        for item in items
    ]


@dataclass
class PairReport:
    outcomes: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    resumed_items: int = 0
    stop_reason: str | None = None
    ledger: UsageLedger = field(default_factory=UsageLedger)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcomes": {name: self.outcomes[name] for name in PAIR_OUTCOMES},
            "unparseable_reasons": dict(self.reasons),
            "resumed_items": self.resumed_items,
            "stop_reason": self.stop_reason,
            "usage": self.ledger.to_dict(),
        }


def _written_ids(path: str | os.PathLike[str]) -> set[str]:
    ids = set()
    for line in read_jsonl(path, strict=True):
        meta = line.record.get("meta")
        input_id = meta.get("input_id") if isinstance(meta, dict) else None
        if not isinstance(input_id, str):
            raise ValueError(
                f"{os.fspath(path)}: line {line.line_number} has no string meta.input_id"
            )
        ids.add(input_id)
    return ids


async def agenerate_csg_pairs(
    items: Iterable[ReviewItem],
    client: LabellingClient,
    *,
    output_path: str | os.PathLike[str],
    templates: PromptTemplates | None = None,
    params: Mapping[str, Any] | None = None,
    source: str = "csg",
    keep_inconsistent: bool = False,
) -> PairReport:
    """Generate one preference pair per review; see the module docstring."""
    items = list(items)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"ReviewItem ids must be unique; {len(ids) - len(set(ids))} repeat")
    report = PairReport()
    done = _written_ids(output_path)
    todo = [item for item in items if item.id not in done]
    report.resumed_items = len(items) - len(todo)
    report.outcomes["written"] += report.resumed_items
    requests = pair_requests(todo, templates, params)
    model = client.config.model

    def on_result(index: int, result: ChatResult) -> None:
        _finish(todo[index], result, report, writer, model, source, keep_inconsistent)

    writer = AppendOnlyJsonl(output_path)
    try:
        run = await client.arun(requests, on_result)
    finally:
        writer.close()
    report.stop_reason = run.stop_reason
    report.ledger = run.ledger
    return report


def generate_csg_pairs(items: Iterable[ReviewItem], client: LabellingClient, **kwargs: Any):
    """Synchronous :func:`agenerate_csg_pairs`."""
    return asyncio.run(agenerate_csg_pairs(items, client, **kwargs))


def _finish(
    item: ReviewItem,
    result: ChatResult,
    report: PairReport,
    writer: AppendOnlyJsonl,
    model: str,
    source: str,
    keep_inconsistent: bool,
) -> None:
    if not result.answered:
        report.outcomes["not_run" if result.status in ("budget", "limit") else "error"] += 1
        return
    parsed = parse_pair_reply(result.content)
    if parsed.reply is None:
        report.outcomes["unparseable"] += 1
        report.reasons[parsed.reason] += 1
        return
    reply = parsed.reply
    expected = 1 if item.sentiment == "positive" else 2
    consistent = reply.more_positive == expected
    if not consistent:
        report.outcomes["inconsistent"] += 1
        if not keep_inconsistent:
            return
    first, second = reply.continuation_1, reply.continuation_2
    chosen, rejected = (first, second) if reply.more_positive == 1 else (second, first)
    record = Preference(
        prompt=reply.prefix,
        chosen=chosen,
        rejected=rejected,
        domain=item.domain,
        source=source,
        meta={
            "input_id": item.id,
            "sentiment": item.sentiment,
            "more_positive": reply.more_positive,
            "consistent": consistent,
            "model": model,
        },
    )
    writer.append(record.to_dict())
    report.outcomes["written"] += 1

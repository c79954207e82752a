"""LLM-judge win rate with position swapping (METHODS §3 "LLM labelling" (b), [MORE] App. D).

For each item (question, reference answer, candidate answer) the judge is asked twice: once with
the reference as answer 1 and the candidate as answer 2, once swapped. Verdicts are parsed
strictly (:func:`~oodpl.data.labelling.parsing.parse_judge_reply`), then combined:

- both calls prefer the candidate → ``win``; both prefer the reference → ``loss``;
- they disagree (the judge followed the position, not the content) → ``tie``;
- either reply unparseable → ``unparseable`` (counted, never guessed);
- either call failed or was not made (budget/limit) → ``error`` / ``not_run`` (not written, so a
  re-run tries again; the cache makes the answered half free).

``win_rate = wins / (wins + losses + ties)``; ``win_rate_ties_half`` counts a tie as half a win.
Finished items go to an append-only JSONL file (one row per item, fsync'd); a re-run skips the
ids already there and reports over all items.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .accounting import UsageLedger
from .client import ChatRequest, ChatResult, LabellingClient
from .jsonl import AppendOnlyJsonl, read_jsonl
from .parsing import parse_judge_reply
from .templates import PromptTemplates

DEFAULT_JUDGE_PARAMS: Mapping[str, Any] = {"temperature": 0.0, "max_tokens": 256}
OUTCOMES = ("win", "loss", "tie", "unparseable", "error", "not_run")
_WRITTEN = frozenset({"win", "loss", "tie", "unparseable"})


@dataclass(frozen=True)
class JudgeItem:
    """One comparison: ``candidate`` (e.g. a policy generation) against ``reference``."""

    id: str
    question: str
    reference: str
    candidate: str
    domain: str = ""

    def __post_init__(self) -> None:
        for name in ("id", "question", "reference", "candidate"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"JudgeItem.{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.domain, str):
            raise TypeError("JudgeItem.domain must be a str")


def combine_verdicts(reference_first: int | None, candidate_first: int | None) -> str:
    """Outcome for the candidate from the two position-swapped verdicts (1/2, None=unparseable).

    ``reference_first``: verdict when answer 1 is the reference; ``candidate_first``: when
    answer 1 is the candidate.
    """
    if reference_first is None or candidate_first is None:
        return "unparseable"
    candidate_wins_first = reference_first == 2
    candidate_wins_second = candidate_first == 1
    if candidate_wins_first and candidate_wins_second:
        return "win"
    if not candidate_wins_first and not candidate_wins_second:
        return "loss"
    return "tie"


def judge_requests(
    items: Sequence[JudgeItem],
    templates: PromptTemplates | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[ChatRequest]:
    """Two requests per item, in item order: reference first, then candidate first."""
    templates = templates if templates is not None else PromptTemplates.load()
    params = dict(DEFAULT_JUDGE_PARAMS if params is None else params)
    requests = []
    for item in items:
        for order, (first, second) in enumerate(
            ((item.reference, item.candidate), (item.candidate, item.reference))
        ):
            messages = templates.judge_messages(item.question, first, second)
            requests.append(ChatRequest(messages, params, tag=f"{item.id}#{order}"))
    return requests


@dataclass
class WinRateReport:
    """Counts over all items (including those read back from an existing output file)."""

    outcomes: Counter = field(default_factory=Counter)
    by_domain: dict[str, Counter] = field(default_factory=dict)
    unparseable_calls: int = 0
    resumed_items: int = 0
    stop_reason: str | None = None
    ledger: UsageLedger = field(default_factory=UsageLedger)

    def add(self, domain: str, outcome: str) -> None:
        self.outcomes[outcome] += 1
        self.by_domain.setdefault(domain, Counter())[outcome] += 1

    @property
    def decided(self) -> int:
        return self.outcomes["win"] + self.outcomes["loss"] + self.outcomes["tie"]

    @property
    def win_rate(self) -> float | None:
        return self.outcomes["win"] / self.decided if self.decided else None

    @property
    def win_rate_ties_half(self) -> float | None:
        if not self.decided:
            return None
        return (self.outcomes["win"] + 0.5 * self.outcomes["tie"]) / self.decided

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcomes": {name: self.outcomes[name] for name in OUTCOMES},
            "by_domain": {
                d: {n: c[n] for n in OUTCOMES} for d, c in sorted(self.by_domain.items())
            },
            "win_rate": self.win_rate,
            "win_rate_ties_half": self.win_rate_ties_half,
            "unparseable_calls": self.unparseable_calls,
            "resumed_items": self.resumed_items,
            "stop_reason": self.stop_reason,
            "usage": self.ledger.to_dict(),
        }


def read_finished(path: str | os.PathLike[str] | None, key: str, outcome_key: str | None) -> dict:
    """``{row[key]: row[outcome_key] or row}`` of an existing output file (empty if none)."""
    finished: dict[str, Any] = {}
    if path is None or not Path(path).exists():
        return finished
    for line in read_jsonl(path, strict=True):
        value = line.record.get(key)
        if not isinstance(value, str):
            raise ValueError(f"{os.fspath(path)}: line {line.line_number} has no string {key!r}")
        if outcome_key is not None:
            outcome = line.record.get(outcome_key)
            if outcome not in _WRITTEN:
                raise ValueError(
                    f"{os.fspath(path)}: line {line.line_number} field {outcome_key!r} is "
                    f"{outcome!r}, expected one of {sorted(_WRITTEN)}"
                )
            finished[value] = outcome
        else:
            finished[value] = line.record
    return finished


async def ajudge_win_rate(
    items: Iterable[JudgeItem],
    client: LabellingClient,
    *,
    templates: PromptTemplates | None = None,
    params: Mapping[str, Any] | None = None,
    output_path: str | os.PathLike[str] | None = None,
) -> WinRateReport:
    """Judge every item twice (position swap) and combine; see the module docstring."""
    items = list(items)
    ids = [item.id for item in items]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"JudgeItem ids must be unique; {duplicate!r} repeats")
    report = WinRateReport()
    finished = read_finished(output_path, "id", "outcome")
    todo = []
    for item in items:
        if item.id in finished:
            report.add(item.domain, finished[item.id])
            report.resumed_items += 1
        else:
            todo.append(item)
    requests = judge_requests(todo, templates, params)
    writer = AppendOnlyJsonl(output_path) if output_path is not None else None
    halves: dict[int, dict[int, ChatResult]] = {}

    def on_result(index: int, result: ChatResult) -> None:
        item_index, order = divmod(index, 2)
        pair = halves.setdefault(item_index, {})
        pair[order] = result
        if len(pair) == 2:
            _finish(todo[item_index], pair[0], pair[1], report, writer, client.config.model)
            del halves[item_index]

    try:
        run = await client.arun(requests, on_result)
    finally:
        if writer is not None:
            writer.close()
    report.stop_reason = run.stop_reason
    report.ledger = run.ledger
    return report


def judge_win_rate(
    items: Iterable[JudgeItem],
    client: LabellingClient,
    *,
    templates: PromptTemplates | None = None,
    params: Mapping[str, Any] | None = None,
    output_path: str | os.PathLike[str] | None = None,
) -> WinRateReport:
    """Synchronous :func:`ajudge_win_rate`."""
    return asyncio.run(
        ajudge_win_rate(items, client, templates=templates, params=params, output_path=output_path)
    )


def _finish(
    item: JudgeItem,
    reference_first: ChatResult,
    candidate_first: ChatResult,
    report: WinRateReport,
    writer: AppendOnlyJsonl | None,
    model: str,
) -> None:
    halves = (reference_first, candidate_first)
    if not all(half.answered for half in halves):
        not_run = any(half.status in ("budget", "limit") for half in halves)
        report.add(item.domain, "not_run" if not_run else "error")
        return
    verdicts = [parse_judge_reply(half.content) for half in halves]
    report.unparseable_calls += sum(1 for verdict in verdicts if not verdict.parsed)
    outcome = combine_verdicts(verdicts[0].choice, verdicts[1].choice)
    report.add(item.domain, outcome)
    if writer is not None:
        writer.append(
            {
                "id": item.id,
                "domain": item.domain,
                "question": item.question,
                "reference": item.reference,
                "candidate": item.candidate,
                "outcome": outcome,
                "verdicts": [verdict.choice for verdict in verdicts],
                "reasons": [verdict.reason for verdict in verdicts],
                "replies": [half.content for half in halves],
                "model": model,
            }
        )

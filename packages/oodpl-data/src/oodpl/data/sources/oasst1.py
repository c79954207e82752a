"""OpenAssistant Conversations (OASST1): ranked sibling replies in message trees, one domain.

Upstream layouts, all read:

- messages: ``2023-04-12_oasst_ready.messages.jsonl.gz`` (or ``..._all...``), one message per
  line with ``message_id, parent_id, user_id, created_date, text, role ("prompter" |
  "assistant"), lang, review_count, review_result, deleted, rank, synthetic, model_name,
  detoxify, message_tree_id, tree_state, emojis, labels``;
- trees: ``2023-04-12_oasst_ready.trees.jsonl.gz``, one tree per line, ``{"message_tree_id",
  "tree_state", "prompt": {<message>, "replies": [<message>, ...]}}`` (nested);
- the ``OpenAssistant/oasst1`` parquet export: ``data/{train,validation}-*.parquet`` of messages.

Pairs: sibling assistant replies to the same parent, ordered by ``rank`` (0 = best; lower is
better). ``pairs`` as in Nectar: ``"all"``, ``"adjacent"`` (default) or ``"best_worst"``.
``prompt`` = the thread from the root to the parent (one prompter message: its text; longer:
the transcript style of :mod:`._dialogue`). Counted, not kept: deleted replies
(``filtered["deleted"]``), replies without a rank (``filtered["unranked"]``), parents with fewer
than two ranked replies (``filtered["single_ranked_reply"]``), other languages
(``languages=["en"]``; ``filtered["other_language"]``), equal ranks (``filtered["rank_tie"]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from oodpl.data.errors import DataFormatError
from oodpl.data.io import Row
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import (
    SourceSpec,
    check_choice,
    data_files,
    expect_mapping,
    file_rows,
    get,
    get_number,
    train_split_hub_requests,
)
from oodpl.data.sources._dialogue import render_prompt
from oodpl.data.sources.nectar import PAIRINGS, rank_pairs

OASST_DOMAINS = ("oasst1",)
SOURCE = "oasst1"
ROLES = {"prompter": "user", "assistant": "assistant"}


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
            f"data/{split}-*.parquet",
            f"{split}-*.parquet",
            "*_ready.messages.jsonl*",
            "*.messages.jsonl*",
            "*_ready.trees.jsonl*",
            "*.trees.jsonl*",
            "*.jsonl*",
        ],
        what="OASST1 message files",
    )
    return file_rows([(f, None) for f in files], collector)


def _flatten_tree(row: Row, node: Mapping, parent_id: str | None) -> Iterator[Mapping]:
    message = {k: v for k, v in node.items() if k != "replies"}
    message.setdefault("parent_id", parent_id)
    yield message
    for i, reply in enumerate(node.get("replies") or []):
        if not isinstance(reply, Mapping):
            raise row.error(
                f"expected a message object, got {type(reply).__name__}",
                field=f"replies[{i}]",
                reason="wrong_type",
            )
        yield from _flatten_tree(row, reply, message.get("message_id"))


def _messages(row: Row) -> Iterator[Mapping]:
    data = expect_mapping(row)
    if "role" not in data and isinstance(data.get("prompt"), Mapping):  # trees layout
        yield from _flatten_tree(row, data["prompt"], None)
    else:
        yield data


class _Message:
    __slots__ = ("deleted", "id", "lang", "parent", "rank", "role", "row", "text")

    def __init__(self, row: Row, m: Mapping) -> None:
        self.row = row
        self.id = get(row, m, "message_id", str)
        self.parent = get(row, m, "parent_id", str, nullable=True)
        self.role = get(row, m, "role", str)
        if self.role not in ROLES:
            raise row.error(
                f"expected 'prompter' or 'assistant', got {self.role!r}",
                field="role",
                reason="bad_value",
            )
        self.text = get(row, m, "text", str)
        self.rank = get_number(row, m, "rank", nullable=True) if "rank" in m else None
        self.lang = get(row, m, "lang", str, optional=True)
        self.deleted = bool(get(row, m, "deleted", bool, optional=True))


def process(
    rows: Iterable[Row],
    collector: RecordCollector,
    *,
    split: str | None = None,
    pairs: str = "adjacent",
    languages: Sequence[str] | None = None,
) -> None:
    check_choice("pairs", pairs, PAIRINGS)
    keep_languages = None if languages is None else set(languages)
    by_id: dict[str, _Message] = {}
    children: dict[str, list[_Message]] = {}
    for row in rows:
        collector.summary.rows_read += 1
        try:
            for m in _messages(row):
                message = _Message(row, m)
                if message.id in by_id:
                    raise row.error(
                        f"duplicate message_id {message.id!r}",
                        field="message_id",
                        reason="bad_value",
                    )
                by_id[message.id] = message
                if message.parent is not None and message.role == "assistant":
                    children.setdefault(message.parent, []).append(message)
        except DataFormatError as err:
            collector.skip(err)
    for parent_id, replies in children.items():
        parent = by_id.get(parent_id)
        try:
            _pairs_for(parent_id, parent, replies, by_id, collector, pairs, keep_languages)
        except DataFormatError as err:
            collector.skip(err)


def _thread(parent: _Message, by_id: Mapping[str, _Message]) -> list[tuple[str, str]]:
    turns, node, seen = [], parent, set()
    while node is not None:
        if node.id in seen:
            raise node.row.error(
                "parent_id links form a cycle", field="parent_id", reason="bad_value"
            )
        seen.add(node.id)
        turns.append((ROLES[node.role], node.text))
        if node.parent is None:
            break
        ancestor = by_id.get(node.parent)
        if ancestor is None:
            raise node.row.error(
                f"parent message {node.parent!r} is not in the data",
                field="parent_id",
                reason="missing_parent",
            )
        node = ancestor
    return turns[::-1]


def _pairs_for(
    parent_id: str,
    parent: _Message | None,
    replies: list[_Message],
    by_id: Mapping[str, _Message],
    collector: RecordCollector,
    pairs: str,
    keep_languages: set[str] | None,
) -> None:
    if parent is None:
        raise replies[0].row.error(
            f"parent message {parent_id!r} is not in the data",
            field="parent_id",
            reason="missing_parent",
        )
    if keep_languages is not None and parent.lang not in keep_languages:
        collector.filter("other_language", len(replies))
        return
    ranked = []
    for reply in replies:
        if reply.deleted:
            collector.filter("deleted")
        elif reply.rank is None:
            collector.filter("unranked")
        else:
            ranked.append((reply.rank, len(ranked), reply))
    if len(ranked) < 2:
        if ranked:
            collector.filter("single_ranked_reply")
        return
    ranked.sort(key=lambda t: (t[0], t[1]))
    try:
        prompt = render_prompt(_thread(parent, by_id))
    except ValueError as exc:
        raise parent.row.error(str(exc), field="role", reason="bad_value") from None
    order = [(rank, i) for i, (rank, _, _) in enumerate(ranked)]
    for better, worse in rank_pairs(order, pairs):
        b, w = ranked[better][2], ranked[worse][2]
        if b.rank == w.rank:
            collector.filter("rank_tie")
            continue
        meta = {
            "parent_id": parent_id,
            "chosen_id": b.id,
            "rejected_id": w.id,
            "rank_chosen": b.rank,
            "rank_rejected": w.rank,
            "lang": parent.lang,
        }
        collector.add_preference(
            b.row,
            prompt=prompt,
            chosen=b.text,
            rejected=w.text,
            domain="oasst1",
            source=SOURCE,
            meta=meta,
        )


SPEC = SourceSpec(
    name=SOURCE,
    description="OpenAssistant OASST1: ranked sibling replies in crowd-sourced message trees",
    domains=OASST_DOMAINS,
    record_type="preference",
    path_hint="*_oasst_ready.messages.jsonl.gz or <root>/data/{train,validation}-*.parquet",
    hub_id="OpenAssistant/oasst1",
    splits=("train", "validation"),
    default_split="train",
    rows=rows,
    process=process,
    options={"pairs": "adjacent", "languages": None},
    hub_requests=train_split_hub_requests,
    aliases=("oasst", "openassistant"),
    homepage="https://huggingface.co/datasets/OpenAssistant/oasst1",
)

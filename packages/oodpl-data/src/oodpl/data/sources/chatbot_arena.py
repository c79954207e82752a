"""Chatbot Arena conversations (``lmsys/chatbot_arena_conversations``): one domain.

Upstream layout: ``<root>/data/train-*.parquet`` with columns ``question_id, model_a, model_b,
winner ("model_a" | "model_b" | "tie" | "tie (bothbad)"), judge, conversation_a,
conversation_b ([{"role": "user"|"assistant", "content": ...}, ...]), turn, anony, language,
tstamp, openai_moderation, toxic_chat_tag``. JSON-lines copies are read too.

Record: the winner's conversation gives ``chosen``, the loser's ``rejected``; ``prompt`` = the
shared user turn. Ties are left out and counted (``filtered["tie"]``,
``filtered["tie (bothbad)"]``). Multi-turn battles (``turn > 1``) are counted in
``filtered["multi_turn"]`` (``multi_turn="drop"``, default) or cut to their first exchange
(``multi_turn="first_turn"``; the vote was cast on the whole conversation). ``languages``
(e.g. ``["English"]``) keeps only those values of ``language`` (``filtered["other_language"]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from oodpl.data.io import Row
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import (
    SourceSpec,
    check_choice,
    data_files,
    expect_mapping,
    file_rows,
    get,
    process_each,
    train_split_hub_requests,
)
from oodpl.data.sources._dialogue import message_turns, split_conversation

ARENA_DOMAINS = ("chatbot_arena",)
SOURCE = "chatbot-arena"
WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")


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
        ["data/train-*.parquet", "train-*.parquet", "*.parquet", "data/*.jsonl*", "*.jsonl*"],
        what="Chatbot Arena files",
    )
    return file_rows([(f, None) for f in files], collector)


def process(
    rows: Iterable[Row],
    collector: RecordCollector,
    *,
    split: str | None = None,
    multi_turn: str = "drop",
    languages: Sequence[str] | None = None,
) -> None:
    check_choice("multi_turn", multi_turn, ("drop", "first_turn"))
    keep_languages = None if languages is None else set(languages)

    def handle(row: Row) -> None:
        data = expect_mapping(row)
        winner = get(row, data, "winner", str)
        if winner not in WINNERS:
            raise row.error(
                f"expected one of {list(WINNERS)}, got {winner!r}",
                field="winner",
                reason="bad_value",
            )
        convs = []
        for name in ("conversation_a", "conversation_b"):
            try:
                convs.append(message_turns(get(row, data, name, list), what=name))
            except (TypeError, ValueError) as exc:
                raise row.error(str(exc), field=name, reason="wrong_type") from None
        language = get(row, data, "language", str, optional=True)
        turn = get(row, data, "turn", int, optional=True)
        if winner.startswith("tie"):
            collector.filter(winner)
            return
        if keep_languages is not None and language not in keep_languages:
            collector.filter("other_language")
            return
        if (turn or 1) > 1 or max(len(c) for c in convs) > 2:
            if multi_turn == "drop":
                collector.filter("multi_turn")
                return
            convs = [c[:2] for c in convs]
        win, lose = (0, 1) if winner == "model_a" else (1, 0)
        try:
            prompt, chosen, rejected = split_conversation(convs[win], convs[lose])
        except ValueError as exc:
            raise row.error(str(exc), field="conversation_a", reason="bad_value") from None
        models = (data.get("model_a"), data.get("model_b"))
        meta = {
            "question_id": data.get("question_id"),
            "model_chosen": models[win],
            "model_rejected": models[lose],
            "language": language,
            "turn": turn,
        }
        collector.add_preference(
            row,
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            domain="chatbot_arena",
            source=SOURCE,
            meta=meta,
        )

    process_each(rows, collector, handle)


SPEC = SourceSpec(
    name=SOURCE,
    description="Chatbot Arena conversations: human votes between two chat models (ties dropped)",
    domains=ARENA_DOMAINS,
    record_type="preference",
    path_hint="<root>/data/train-*.parquet (lmsys/chatbot_arena_conversations)",
    hub_id="lmsys/chatbot_arena_conversations",
    splits=("train",),
    default_split="train",
    rows=rows,
    process=process,
    options={"multi_turn": "drop", "languages": None},
    hub_requests=train_split_hub_requests,
    aliases=("arena", "chatbot_arena", "lmsys-arena"),
    homepage="https://huggingface.co/datasets/lmsys/chatbot_arena_conversations",
)

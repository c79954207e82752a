"""Nectar (``berkeley-nest/Nectar``): 7-wise GPT-4 rankings of chat answers, one domain.

Upstream layout: ``<root>/data/rlaif.parquet`` with columns ``prompt`` (a transcript
``"\\n\\nHuman: ...\\n\\nAssistant:"``, kept verbatim), ``answers`` (``[{"answer", "model",
"rank"}, ...]``, rank 1 = best), ``turns``, ``num_responses``, ``source`` (list of origin
datasets), ``good_natured``. JSON-lines copies are read too.

Pairs from one ranking (``pairs=``): ``"all"`` every pair of distinct ranks (21 for 7 answers),
``"adjacent"`` consecutive ranks only (6), ``"best_worst"`` the top against the bottom (1). The
better-ranked answer is chosen. Pairs of equal rank are counted in ``filtered["rank_tie"]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations, pairwise
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
    get_number,
    process_each,
    train_split_hub_requests,
)

NECTAR_DOMAINS = ("nectar",)
SOURCE = "nectar"
PAIRINGS = ("all", "adjacent", "best_worst")


def rows(
    path: Path,
    collector: RecordCollector,
    *,
    domains: tuple[str, ...],
    split: str | None,
    **_options: object,
) -> Iterable[Row]:
    files = data_files(
        path, ["data/*.parquet", "*.parquet", "data/*.jsonl*", "*.jsonl*"], what="Nectar files"
    )
    return file_rows([(f, None) for f in files], collector)


def rank_pairs(ranked: list[tuple[float, int]], pairs: str) -> list[tuple[int, int]]:
    """Index pairs ``(better, worse)`` from ``[(rank, index), ...]`` sorted by rank."""
    if pairs == "all":
        return [(a[1], b[1]) for a, b in combinations(ranked, 2)]
    if pairs == "adjacent":
        return [(a[1], b[1]) for a, b in pairwise(ranked)]
    return [(ranked[0][1], ranked[-1][1])] if len(ranked) >= 2 else []


def process(
    rows: Iterable[Row],
    collector: RecordCollector,
    *,
    split: str | None = None,
    pairs: str = "adjacent",
) -> None:
    check_choice("pairs", pairs, PAIRINGS)

    def handle(row: Row) -> None:
        data = expect_mapping(row)
        prompt = get(row, data, "prompt", str)
        answers = get(row, data, "answers", list)
        ranked, texts, models = [], [], []
        for i, answer in enumerate(answers):
            texts.append(get(row, answer, "answer", str, path=f"answers[{i}]"))
            models.append(answer.get("model"))
            ranked.append((get_number(row, answer, "rank", path=f"answers[{i}]"), i))
        if len(answers) < 2:
            raise row.error(
                f"expected at least 2 answers, got {len(answers)}",
                field="answers",
                reason="bad_value",
            )
        ranked.sort()
        rank_of = {i: r for r, i in ranked}
        for better, worse in rank_pairs(ranked, pairs):
            if rank_of[better] == rank_of[worse]:
                collector.filter("rank_tie")
                continue
            meta = {
                "model_chosen": models[better],
                "model_rejected": models[worse],
                "rank_chosen": rank_of[better],
                "rank_rejected": rank_of[worse],
                "origin": data.get("source"),
                "turns": data.get("turns"),
            }
            collector.add_preference(
                row,
                prompt=prompt,
                chosen=texts[better],
                rejected=texts[worse],
                domain="nectar",
                source=SOURCE,
                meta=meta,
            )

    process_each(rows, collector, handle)


SPEC = SourceSpec(
    name=SOURCE,
    description="Nectar: GPT-4 7-wise rankings of chat answers, turned into pairs",
    domains=NECTAR_DOMAINS,
    record_type="preference",
    path_hint="<root>/data/rlaif.parquet (berkeley-nest/Nectar)",
    hub_id="berkeley-nest/Nectar",
    splits=("train",),
    default_split="train",
    rows=rows,
    process=process,
    options={"pairs": "adjacent"},
    hub_requests=train_split_hub_requests,
    homepage="https://huggingface.co/datasets/berkeley-nest/Nectar",
)

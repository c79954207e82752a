"""WebGPT comparisons: pairs of browser-assisted long-form answers, one domain ``webgpt``.

Upstream layouts, both read:

- the OpenAI release ``comparisons.jsonl``: each line a JSON list of two records
  ``{"question": {"dataset", "id", "full_text"}, "quotes": {"title": [...], "extract": [...]},
  "answer": str, "tokens": ..., "score": float}``;
- the ``openai/webgpt_comparisons`` flat rows (JSON lines or parquet): ``question``,
  ``quotes_0``, ``answer_0``, ``tokens_0``, ``score_0``, ``quotes_1``, ``answer_1``, ``tokens_1``,
  ``score_1``.

Scores lie in [-1, 1] and sum to zero; the answer with the higher score is chosen. Ties
(equal scores, upstream treated as soft 50% labels) are left out and counted in
``summary.filtered["tie"]``. ``prompt = question.full_text``; ``meta`` keeps the question's
dataset and id and both scores; ``include_quotes=True`` also keeps the quotes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from oodpl.data.io import Row
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import (
    SourceSpec,
    data_files,
    file_rows,
    get,
    get_number,
    process_each,
    train_split_hub_requests,
)

WEBGPT_DOMAINS = ("webgpt",)
SOURCE = "webgpt"


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
        ["comparisons.jsonl*", "data/*.parquet", "*.parquet", "*.jsonl*"],
        what="WebGPT comparisons files",
    )
    return file_rows([(f, None) for f in files], collector)


def _flatten(row: Row) -> Mapping:
    data = row.data
    if isinstance(data, list):
        if len(data) != 2:
            raise row.error(f"expected a pair of 2 records, got {len(data)}", reason="bad_value")
        flat = {}
        for i, part in enumerate(data):
            for key in ("question", "quotes", "answer", "score"):
                flat[key if key == "question" else f"{key}_{i}"] = get(
                    row, part, key, object, path=f"[{i}]", optional=key == "quotes"
                )
        return flat
    if not isinstance(data, Mapping):
        raise row.error(
            f"expected a JSON object or a pair list, got {type(data).__name__}", reason="wrong_type"
        )
    return data


def process(
    rows: Iterable[Row],
    collector: RecordCollector,
    *,
    split: str | None = None,
    include_quotes: bool = False,
) -> None:
    def handle(row: Row) -> None:
        data = _flatten(row)
        question = get(row, data, "question", Mapping)
        text = get(row, question, "full_text", str, path="question")
        answers = [get(row, data, f"answer_{i}", str) for i in (0, 1)]
        scores = [get_number(row, data, f"score_{i}") for i in (0, 1)]
        if scores[0] == scores[1]:
            collector.filter("tie")
            return
        best = 0 if scores[0] > scores[1] else 1
        meta = {
            "question_dataset": question.get("dataset"),
            "question_id": question.get("id"),
            "score_chosen": scores[best],
            "score_rejected": scores[1 - best],
        }
        if include_quotes:
            meta["quotes_chosen"] = data.get(f"quotes_{best}")
            meta["quotes_rejected"] = data.get(f"quotes_{1 - best}")
        collector.add_preference(
            row,
            prompt=text,
            chosen=answers[best],
            rejected=answers[1 - best],
            domain="webgpt",
            source=SOURCE,
            meta=meta,
        )

    process_each(rows, collector, handle)


SPEC = SourceSpec(
    name=SOURCE,
    description="WebGPT comparisons: human-rated pairs of long-form answers (ties dropped)",
    domains=WEBGPT_DOMAINS,
    record_type="preference",
    path_hint="comparisons.jsonl (OpenAI release) or a copy of openai/webgpt_comparisons",
    hub_id="openai/webgpt_comparisons",
    splits=("train",),
    default_split="train",
    rows=rows,
    process=process,
    options={"include_quotes": False},
    hub_requests=train_split_hub_requests,
    aliases=("webgpt-comparisons", "webgpt_comparisons"),
    homepage="https://openaipublic.blob.core.windows.net/webgpt-answer-viewer/comparisons.jsonl",
)

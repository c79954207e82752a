"""Stanford Human Preferences (SHP): 18 subreddit domains of naturally ranked Reddit answers.

Upstream layout (``stanfordnlp/SHP``): ``<root>/<subreddit>/{train,validation,test}.json``, each
file JSON lines with the fields ``post_id, domain ("askculinary_train"), upvote_ratio, history,
c_root_id_A, c_root_id_B, created_at_utc_A, created_at_utc_B, score_A, score_B, human_ref_A,
human_ref_B, labels (1 if A is preferred), seconds_difference, score_ratio``.

Record: ``prompt = history``; ``chosen``/``rejected`` = ``human_ref_A``/``human_ref_B`` ordered by
``labels``; ``domain`` = the subreddit. ``min_score_ratio`` (e.g. 2.0, as the SHP authors
suggest) keeps pairs with ``score_ratio >= min_score_ratio``; the rest are counted in
``summary.filtered["score_ratio<2.0"]``. A file path instead of the root reads that one file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from oodpl.data.io import Row
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import (
    SourceSpec,
    expect_mapping,
    file_rows,
    get,
    get_number,
    process_each,
)

SHP_DOMAINS = (
    "askacademia",
    "askanthropology",
    "askbaking",
    "askcarguys",
    "askculinary",
    "askdocs",
    "askengineers",
    "askhistorians",
    "askhr",
    "askphilosophy",
    "askphysics",
    "askscience",
    "asksciencefiction",
    "asksocialscience",
    "askvet",
    "changemyview",
    "explainlikeimfive",
    "legaladvice",
)
SPLITS = ("train", "validation", "test")
SOURCE = "shp"


def rows(
    path: Path,
    collector: RecordCollector,
    *,
    domains: tuple[str, ...],
    split: str,
    **_options: object,
) -> Iterable[Row]:
    if path.is_file():
        return file_rows([(path, None)], collector)
    if not path.is_dir():
        raise FileNotFoundError(f"path: {str(path)!r} does not exist (SHP root directory)")
    wanted = domains or SHP_DOMAINS
    files = [(path / d / f"{split}.json", d) for d in wanted]
    present = [(f, d) for f, d in files if f.is_file()]
    missing = [str(f) for f, _ in files if not f.is_file()]
    if domains and missing:
        raise FileNotFoundError(f"path: missing SHP file(s) {missing}")
    if not present:
        raise FileNotFoundError(
            f"path: no SHP files under {str(path)!r} (expected <subreddit>/{split}.json)"
        )
    return file_rows(present, collector)


def _domain_of(row: Row, value: str) -> str:
    name, _, suffix = value.rpartition("_")
    if suffix not in SPLITS or not name:
        name = value
    if name not in SHP_DOMAINS:
        raise row.error(f"unknown SHP domain {value!r}", field="domain", reason="unknown_domain")
    if row.hint is not None and row.hint != name:
        raise row.error(
            f"domain {value!r} does not match directory {row.hint!r}",
            field="domain",
            reason="bad_value",
        )
    return name


def process(
    rows: Iterable[Row],
    collector: RecordCollector,
    *,
    split: str | None = None,
    min_score_ratio: float | None = None,
) -> None:
    if min_score_ratio is not None and (
        isinstance(min_score_ratio, bool)
        or not isinstance(min_score_ratio, (int, float))
        or min_score_ratio < 1.0
    ):
        raise ValueError(f"min_score_ratio: expected a number >= 1, got {min_score_ratio!r}")
    filter_key = f"score_ratio<{min_score_ratio}"

    def handle(row: Row) -> None:
        data = expect_mapping(row)
        domain = _domain_of(row, get(row, data, "domain", str))
        history = get(row, data, "history", str)
        ref_a = get(row, data, "human_ref_A", str)
        ref_b = get(row, data, "human_ref_B", str)
        label = get(row, data, "labels", int)
        if label not in (0, 1):
            raise row.error(f"expected 0 or 1, got {label!r}", field="labels", reason="bad_value")
        score_a = get_number(row, data, "score_A")
        score_b = get_number(row, data, "score_B")
        ratio = get_number(row, data, "score_ratio")
        if min_score_ratio is not None and ratio < min_score_ratio:
            collector.filter(filter_key)
            return
        chosen, rejected = (ref_a, ref_b) if label == 1 else (ref_b, ref_a)
        meta = {
            "post_id": get(row, data, "post_id", str),
            "score_chosen": score_a if label == 1 else score_b,
            "score_rejected": score_b if label == 1 else score_a,
            "score_ratio": ratio,
            "upvote_ratio": get_number(row, data, "upvote_ratio", nullable=True),
            "chosen_id": data.get("c_root_id_A" if label == 1 else "c_root_id_B"),
            "rejected_id": data.get("c_root_id_B" if label == 1 else "c_root_id_A"),
            "seconds_difference": data.get("seconds_difference"),
        }
        collector.add_preference(
            row,
            prompt=history,
            chosen=chosen,
            rejected=rejected,
            domain=domain,
            source=SOURCE,
            meta=meta,
        )

    process_each(rows, collector, handle)


def hub_requests(domains: tuple[str, ...], split: str | None):
    if not domains:
        return [({"split": split}, None)]
    return [({"data_dir": d, "split": split}, d) for d in domains]


SPEC = SourceSpec(
    name=SOURCE,
    description="Stanford Human Preferences: Reddit answers ranked by upvotes, 18 subreddits",
    domains=SHP_DOMAINS,
    record_type="preference",
    path_hint="<root>/<subreddit>/{train,validation,test}.json (git clone of stanfordnlp/SHP)",
    hub_id="stanfordnlp/SHP",
    splits=SPLITS,
    default_split="train",
    rows=rows,
    process=process,
    options={"min_score_ratio": None},
    hub_requests=hub_requests,
    homepage="https://huggingface.co/datasets/stanfordnlp/SHP",
)

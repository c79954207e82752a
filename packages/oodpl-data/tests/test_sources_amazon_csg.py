"""Amazon multi-domain reviews (sorted_data_acl pseudo-XML) and the CSG pairs JSONL format."""

from __future__ import annotations

import json

import pytest

from oodpl.data.errors import DataFormatError
from oodpl.data.records import Completion, Preference
from oodpl.data.registry import load
from oodpl.data.sources.amazon import read_reviews, split_prefix
from oodpl.data.sources.csg_pairs import CSG_PAIR_KEYS, write_csg_pairs


@pytest.fixture
def acl(fixtures):
    return fixtures / "amazon" / "sorted_data_acl"


def test_reviews_become_completions_per_domain(acl):
    result = load("amazon", acl)
    assert all(isinstance(r, Completion) for r in result)
    assert result.summary.per_domain == {"books": 2 + 1, "dvd": 2, "electronics": 2, "kitchen": 2}
    first = result[0]
    assert first.prompt == "I loved every page of this novel &"
    assert first.response == " its ending <3. The characters feel alive and the plot never drags."
    assert first.meta["sentiment"] == "positive" and first.meta["rating"] == 5.0
    assert first.meta["title"] == "Great read" and first.meta["unique_id"] == "0312203233:great"
    negatives = [r for r in result if r.meta["label_file"] == "negative"]
    assert {r.meta["sentiment"] for r in negatives} == {"negative"} and len(negatives) == 4


def test_latin1_text_and_kitchen_directory(acl):
    dvd = load("amazon", acl, domains=["dvd"])
    assert any("(café scene included)" in r.prompt + r.response for r in dvd)
    kitchen = load("amazon", acl, domains=["kitchen"])
    assert {r.domain for r in kitchen} == {"kitchen"} and len(kitchen) == 2


def test_unlabeled_file_sentiment_from_rating(acl):
    result = load("amazon", acl, domains=["books"], files=("positive", "negative", "unlabeled"))
    (unlabeled,) = [r for r in result if r.meta["label_file"] == "unlabeled"]
    assert unlabeled.meta["sentiment"] == "neutral" and unlabeled.meta["rating"] == 3.0
    with pytest.raises(FileNotFoundError, match="unlabeled"):
        load("amazon", acl, domains=["dvd"], files=("unlabeled",))
    with pytest.raises(ValueError, match="files"):
        load("amazon", acl, files=("happy",))


def test_prompt_plus_response_is_the_review(acl):
    reviews = read_reviews(acl)
    assert len(reviews) == 9
    records = load("amazon", acl, prompt_words=3)
    for review, rec in zip(reviews, records, strict=True):
        assert rec.prompt + rec.response == review.text
        assert len(rec.prompt.split()) == 3
    with pytest.raises(ValueError, match="prompt_words"):
        load("amazon", acl, prompt_words=0)


def test_split_prefix_short_texts():
    assert split_prefix("one two three", 8) == ("one two", " three")
    assert split_prefix("one", 8) == ("", "one")


def _write_review_file(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body.encode("latin-1"))


def test_processed_acl_is_rejected_with_advice(tmp_path):
    path = tmp_path / "books" / "positive.review"
    _write_review_file(path, "great:2 read_it:1 #label#:positive\n")
    with pytest.raises(DataFormatError, match="processed_acl") as info:
        load("amazon", path)
    assert info.value.path == str(path)


def test_unclosed_review_block_and_missing_text(acl, tmp_path):
    good = (acl / "books" / "negative.review").read_text(encoding="latin-1")
    broken = good.replace("</review>\n", "") + good + good.replace("<review_text>", "<text>")
    path = tmp_path / "books" / "negative.review"
    _write_review_file(path, broken)
    with pytest.raises(DataFormatError) as info:
        load("amazon", path)
    assert (info.value.line, info.value.reason) == (1, "malformed_review")
    result = load("amazon", path, lenient=True)
    assert len(result) == 1
    assert result.summary.skipped == {"malformed_review": 1, "missing_field:review_text": 1}


def test_bad_rating_is_wrong_type(acl, tmp_path):
    text = (acl / "books" / "negative.review").read_text(encoding="latin-1")
    path = tmp_path / "books" / "negative.review"
    _write_review_file(path, text.replace("<rating>\n1.0", "<rating>\none star"))
    with pytest.raises(DataFormatError) as info:
        load("amazon", path)
    assert (info.value.field, info.value.reason, info.value.line) == ("rating", "wrong_type", 1)


def test_empty_review_file(tmp_path):
    path = tmp_path / "dvd" / "positive.review"
    _write_review_file(path, "\n")
    with pytest.raises(DataFormatError) as info:
        load("amazon", path)
    assert info.value.reason == "empty_file"


# -- CSG pairs --------------------------------------------------------------------------------


def test_csg_pairs_fixture(fixtures, jsonl_rows):
    result = load("csg-pairs", fixtures / "csg_pairs")
    raw = jsonl_rows(fixtures / "csg_pairs" / "pairs.jsonl")
    assert [r.to_trl() for r in result] == [
        {k: row[k] for k in ("prompt", "chosen", "rejected")} for row in raw
    ]
    assert [r.domain for r in result] == ["books", "dvd", "electronics", "kitchen"]
    assert result[2].source == "csg-pairs" and result[2].meta == {}
    assert result[0].source == "csg-llm:tiny" and result[0].meta["review_id"] == "b1"


def test_write_then_load_round_trip(tmp_path, jsonl_rows):
    records = [
        Preference("Great", " fun.", " dull.", "books", "csg-llm:x", {"sentiment": "positive"}),
        Preference("The pan", " heats evenly.", " warps.", "kitchen"),
    ]
    path = write_csg_pairs(records, tmp_path / "out" / "pairs.jsonl.gz")
    loaded = load("csg", path)
    assert list(loaded) == [
        records[0],
        Preference("The pan", " heats evenly.", " warps.", "kitchen", "csg-pairs"),
    ]
    assert [tuple(row) for row in jsonl_rows(path)] == [CSG_PAIR_KEYS, CSG_PAIR_KEYS]
    with pytest.raises(ValueError, match="domain"):
        write_csg_pairs([Preference("a", "b", "c", "askdocs")], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "domain", "missing_field"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "domain": "toys"},
            "domain",
            "unknown_domain",
        ),
        ({"prompt": "p", "choosen": "a", "rejected": "b", "domain": "dvd"}, "choosen", "bad_value"),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "domain": "dvd", "meta": [1]},
            "meta",
            "wrong_type",
        ),
        (
            {"prompt": "p", "chosen": ["a"], "rejected": "b", "domain": "dvd"},
            "chosen",
            "wrong_type",
        ),
    ],
)
def test_csg_bad_rows(tmp_path, raw_lines, row, field, reason):
    good = {"prompt": "p", "chosen": "a", "rejected": "b", "domain": "dvd"}
    path = raw_lines(tmp_path / "pairs.jsonl", [json.dumps(good), json.dumps(row)])
    with pytest.raises(DataFormatError) as info:
        load("csg-pairs", path)
    assert (info.value.line, info.value.field, info.value.reason) == (2, field, reason)
    assert len(load("csg-pairs", path, lenient=True)) == 1


def test_csg_pairs_from_csv_with_json_meta(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        'prompt,chosen,rejected,domain,meta\nIt,"works, great",broke,electronics,"{""k"": 1}"\n'
    )
    (rec,) = load("csg-pairs", path)
    assert (rec.chosen, rec.domain, rec.meta) == ("works, great", "electronics", {"k": 1})

"""Stanford SHP loader on a fixture in the upstream <subreddit>/<split>.json layout."""

from __future__ import annotations

import json

import pytest

from oodpl.data.errors import DataFormatError
from oodpl.data.registry import load
from oodpl.data.sources.shp import SHP_DOMAINS


def test_loads_all_domains_with_labels(fixtures, jsonl_rows):
    result = load("shp", fixtures / "shp")
    assert result.summary.per_domain == {"askculinary": 3, "askdocs": 2, "legaladvice": 1}
    assert result.summary.rows_read == 6 and result.summary.n_filtered == 0
    raw = jsonl_rows(fixtures / "shp" / "askculinary" / "train.json")
    by_key = {(r.meta["chosen_id"], r.meta["rejected_id"]): r for r in result}
    assert len(by_key) == len(result)
    for row in raw:
        a_wins = row["labels"] == 1
        ids = (row["c_root_id_A"], row["c_root_id_B"])
        rec = by_key[ids if a_wins else ids[::-1]]
        assert rec.prompt == row["history"]
        assert rec.chosen == (row["human_ref_A"] if a_wins else row["human_ref_B"])
        assert rec.rejected == (row["human_ref_B"] if a_wins else row["human_ref_A"])
        assert rec.domain == "askculinary" and rec.source == "shp"
        assert rec.meta["score_chosen"] >= rec.meta["score_rejected"]


def test_label_zero_prefers_b(fixtures):
    (rec,) = [r for r in load("shp", fixtures / "shp") if r.meta["post_id"] == "p2"]
    assert rec.chosen == "Yes, a seasoned pan handles acid well for an hour."
    assert (rec.meta["score_chosen"], rec.meta["score_rejected"]) == (18.0, 12.0)


def test_domains_and_split(fixtures):
    docs = load("shp", fixtures / "shp", domains=["askdocs"])
    assert {r.domain for r in docs} == {"askdocs"} and len(docs) == 2
    assert len(docs.summary.files) == 1
    test = load("shp", fixtures / "shp", split="test")
    assert [r.meta["post_id"] for r in test] == ["p9"]


def test_min_score_ratio_filters_and_counts(fixtures):
    result = load("shp", fixtures / "shp", min_score_ratio=2.0)
    assert len(result) == 5
    assert result.summary.filtered == {"score_ratio<2.0": 1}
    assert all(r.meta["score_ratio"] >= 2.0 for r in result)
    with pytest.raises(ValueError, match="min_score_ratio"):
        load("shp", fixtures / "shp", min_score_ratio=0.5)


def test_single_file_path(fixtures):
    result = load("shp", fixtures / "shp" / "legaladvice" / "train.json")
    assert [r.domain for r in result] == ["legaladvice"]


def test_requested_domain_missing_on_disk(fixtures):
    with pytest.raises(FileNotFoundError, match="askvet"):
        load("shp", fixtures / "shp", domains=["askvet"])


def _edit_line(path, line_no, edit):
    lines = path.read_text().splitlines()
    row = json.loads(lines[line_no - 1])
    edit(row)
    lines[line_no - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("edit", "field", "reason"),
    [
        (lambda r: r.pop("labels"), "labels", "missing_field"),
        (lambda r: r.update(labels="1"), "labels", "wrong_type"),
        (lambda r: r.update(labels=2), "labels", "bad_value"),
        (lambda r: r.update(score_A=True), "score_A", "wrong_type"),
        (lambda r: r.update(history=None), "history", "wrong_type"),
        (lambda r: r.update(domain="askfoo_train"), "domain", "unknown_domain"),
        (lambda r: r.update(domain="askdocs_train"), "domain", "bad_value"),
    ],
)
def test_bad_rows_name_file_line_field(fixture_copy, edit, field, reason):
    root = fixture_copy("shp")
    path = root / "askculinary" / "train.json"
    _edit_line(path, 2, edit)
    with pytest.raises(DataFormatError) as info:
        load("shp", root, domains=["askculinary"])
    err = info.value
    assert (err.path, err.line, err.field, err.reason) == (str(path), 2, field, reason)
    lenient = load("shp", root, domains=["askculinary"], lenient=True)
    assert len(lenient) == 2 and lenient.summary.skipped == {f"{reason}:{field}": 1}


def test_malformed_json_line_lenient(fixture_copy):
    root = fixture_copy("shp")
    path = root / "askdocs" / "train.json"
    path.write_text(path.read_text() + '{"post_id": "broken",\n')
    with pytest.raises(DataFormatError) as info:
        load("shp", root)
    assert (info.value.line, info.value.reason) == (3, "malformed_json")
    result = load("shp", root, lenient=True)
    assert len(result) == 6 and result.summary.skipped == {"malformed_json": 1}


def test_empty_file(fixture_copy):
    root = fixture_copy("shp")
    path = root / "askdocs" / "train.json"
    path.write_text("")
    with pytest.raises(DataFormatError) as info:
        load("shp", root)
    assert (info.value.path, info.value.reason) == (str(path), "empty_file")
    result = load("shp", root, lenient=True)
    assert len(result) == 4 and result.summary.skipped == {"empty_file": 1}


def test_empty_text_follows_on_invalid(fixture_copy):
    root = fixture_copy("shp")
    _edit_line(root / "askdocs" / "train.json", 1, lambda r: r.update(human_ref_B=" "))
    with pytest.raises(DataFormatError, match="empty text"):
        load("shp", root)
    result = load("shp", root, on_invalid="drop")
    assert len(result) == 5 and result.summary.dropped == {"empty_field:rejected": 1}


def test_domain_list_is_the_18_subreddits():
    assert len(SHP_DOMAINS) == 18 == len(set(SHP_DOMAINS))

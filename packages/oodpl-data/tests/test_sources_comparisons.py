"""WebGPT comparisons and Summarize-from-feedback loaders on upstream-layout fixtures."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oodpl.data.errors import DataFormatError
from oodpl.data.registry import load

# -- WebGPT -------------------------------------------------------------------------------------


def test_webgpt_release_pairs(fixtures):
    result = load("webgpt", fixtures / "webgpt")
    assert [(r.prompt, r.chosen, r.rejected) for r in result] == [
        (
            "Why is the sky blue?",
            "Rayleigh scattering favours short wavelengths.[1]",
            "Because of the ocean.",
        ),
        (
            "Why do cats purr?",
            "Purring comes from laryngeal muscles twitching 25-150 times a second.[1]",
            "No idea.",
        ),
    ]
    assert result.summary.filtered == {"tie": 1}
    assert result[1].meta == {
        "question_dataset": "eli5",
        "question_id": "q2",
        "score_chosen": 0.5,
        "score_rejected": -0.5,
    }


def _flat(pair):
    flat = {"question": pair[0]["question"]}
    for i, part in enumerate(pair):
        for key in ("quotes", "answer", "tokens", "score"):
            flat[f"{key}_{i}"] = part[key]
    return flat


def test_webgpt_hub_style_flat_parquet(fixtures, tmp_path, jsonl_rows):
    pairs = jsonl_rows(fixtures / "webgpt" / "comparisons.jsonl")
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([_flat(p) for p in pairs]), path)
    flat = load("webgpt-comparisons", tmp_path)
    assert list(flat) == list(load("webgpt", fixtures / "webgpt"))
    quoted = load("webgpt", tmp_path, include_quotes=True)
    assert quoted[0].meta["quotes_chosen"]["title"] == ["Example (example.org)"]


def test_webgpt_bad_pair(tmp_path, raw_lines, fixtures, jsonl_rows):
    pair = jsonl_rows(fixtures / "webgpt" / "comparisons.jsonl")[0]
    no_score = [pair[0], {k: v for k, v in pair[1].items() if k != "score"}]
    path = raw_lines(tmp_path / "comparisons.jsonl", [json.dumps(pair[:1]), json.dumps(no_score)])
    with pytest.raises(DataFormatError) as info:
        load("webgpt", path)
    assert (info.value.line, info.value.reason) == (1, "bad_value")
    result = load("webgpt", path, lenient=True)
    assert len(result) == 0
    assert result.summary.skipped == {"bad_value": 1, "missing_field:[1].score": 1}


# -- Summarize from feedback ------------------------------------------------------------------


def test_summarize_train_split_is_tldr(fixtures):
    result = load("summarize", fixtures / "summarize")
    assert [r.domain for r in result] == ["tldr", "tldr"]
    assert result.summary.filtered == {"other_split": 3}
    first = result[0]
    assert first.prompt == (
        "SUBREDDIT: r/relationships\nTITLE: My friend [25] never calls\n"
        "POST: We used to talk every week. Now she never calls back. What should I do?\nTL;DR:"
    )
    assert (first.chosen, first.rejected) == (
        " Friend stopped calling; how do I reconnect?",
        " Friend bad.",
    )
    assert result[1].chosen == " Pay the 9% loan first to save interest."
    assert first.meta["policy_chosen"] == "sup2" and first.meta["subreddit"] == "relationships"


def test_summarize_validation_has_news_domains(fixtures):
    result = load("summarize", fixtures / "summarize", split="validation")
    assert result.summary.per_domain == {"tldr": 1, "cnn": 1, "dailymail": 1}
    cnn = next(r for r in result if r.domain == "cnn")
    assert cnn.prompt == (
        "TITLE: Storm hits coast\nARTICLE: A storm hit the coast on Monday, closing schools "
        "and roads.\nTL;DR:"
    )
    assert cnn.chosen == " A storm hit the coast on Monday, closing schools."
    assert len(load("summarize", fixtures / "summarize", split="valid2")) == 1


def test_summarize_domain_filter_counts(fixtures):
    result = load("summarize", fixtures / "summarize", split="all", domains=["cnn", "dailymail"])
    assert result.summary.per_domain == {"cnn": 1, "dailymail": 1}
    assert result.summary.filtered == {"other_domain": 3}


def test_summarize_parquet_export(fixtures, tmp_path, jsonl_rows):
    rows = []
    for name in ("batch3.json", "cnndm0.json"):
        rows += jsonl_rows(fixtures / "summarize" / "comparisons" / name)
    for row in rows:  # the hub export fills absent info fields with null
        for key in ("id", "post", "title", "subreddit", "site", "article"):
            row["info"].setdefault(key, None)
    path = tmp_path / "comparisons" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path)
    result = load("summarize", tmp_path, split="all")
    assert list(result) == list(load("summarize", fixtures / "summarize", split="all"))


@pytest.mark.parametrize(
    ("edit", "field", "reason"),
    [
        (lambda r: r["info"].update(site="nytimes"), "info.site", "unknown_domain"),
        (lambda r: r.update(choice=2), "choice", "bad_value"),
        (lambda r: r["summaries"].pop(), "summaries", "bad_value"),
        (lambda r: r["summaries"][0].pop("text"), "summaries[0].text", "missing_field"),
        (lambda r: r.pop("info"), "info", "missing_field"),
    ],
)
def test_summarize_bad_rows(fixture_copy, edit, field, reason):
    root = fixture_copy("summarize")
    path = root / "comparisons" / "cnndm0.json"
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    edit(row)
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as info:
        load("summarize", root, split="all")
    assert (info.value.path, info.value.line, info.value.field, info.value.reason) == (
        str(path),
        2,
        field,
        reason,
    )


def test_summarize_unknown_split(fixtures):
    with pytest.raises(ValueError, match="split"):
        load("summarize", fixtures / "summarize", split="test")

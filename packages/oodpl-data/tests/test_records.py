"""Records: validation policy, accounting, and round trips through TRL rows and datasets."""

from __future__ import annotations

import datasets
import pytest

import oodpl.core.records as core_records
from oodpl.data.errors import DataFormatError
from oodpl.data.records import (
    Completion,
    LoadResult,
    LoadSummary,
    Preference,
    RecordCollector,
    from_dataset,
    from_trl_rows,
    to_dataset,
    to_trl_rows,
)

PREFS = [
    Preference("Q1?", "good answer", "bad answer", "books", "src", {"score": 1.5, "tags": ["a"]}),
    Preference("Q2?", "yes", "no", "dvd", "", {}),
    Preference("\n\nHuman: hi\n\nAssistant:", " hello", " go away", "helpful-base", "hh"),
]
COMPS = [
    Completion("Once upon", " a time.", "books", "amazon", {"sentiment": "positive"}),
    Completion("The disc", " skipped.", "dvd"),
]


def test_records_are_the_core_classes():
    assert Preference is core_records.Preference
    assert Completion is core_records.Completion


def test_trl_rows_round_trip():
    rows = to_trl_rows(PREFS)
    assert rows[0] == {"prompt": "Q1?", "chosen": "good answer", "rejected": "bad answer"}
    back = from_trl_rows(rows, domain="books")
    assert [(r.prompt, r.chosen, r.rejected, r.domain) for r in back] == [
        (p.prompt, p.chosen, p.rejected, "books") for p in PREFS
    ]


def test_trl_rows_with_domain_keep_domain():
    rows = to_trl_rows(PREFS, with_domain=True)
    back = from_trl_rows(rows, domain="ignored-when-column-present")
    assert [r.domain for r in back] == [p.domain for p in PREFS]
    assert [r.source for r in back] == [p.source for p in PREFS]


def test_completion_trl_rows_use_prompt_completion():
    rows = to_trl_rows(COMPS)
    assert rows[0] == {"prompt": "Once upon", "completion": " a time."}
    back = from_trl_rows(rows, domain="books")
    assert [(c.prompt, c.response) for c in back] == [(c.prompt, c.response) for c in COMPS]


def test_dataset_round_trip_preserves_everything():
    ds = to_dataset(PREFS)
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["prompt", "chosen", "rejected", "domain", "source", "meta"]
    back = from_dataset(ds)
    assert isinstance(back, LoadResult)
    assert list(back) == PREFS
    assert [r.meta for r in back] == [r.meta for r in PREFS]
    assert back.summary.per_domain == {"books": 1, "dvd": 1, "helpful-base": 1}


def test_completion_dataset_round_trip():
    ds = to_dataset(COMPS)
    assert ds.column_names == ["prompt", "response", "domain", "source", "meta"]
    back = from_dataset(ds)
    assert list(back) == COMPS and [c.meta for c in back] == [c.meta for c in COMPS]


def test_to_dataset_rejects_mixed_and_needs_kind_when_empty():
    with pytest.raises(TypeError, match="records"):
        to_dataset([PREFS[0], COMPS[0]])
    with pytest.raises(ValueError, match="kind"):
        to_dataset([])
    assert len(to_dataset([], kind="completion")) == 0


def test_from_dataset_conversational_explicit_prompt():
    ds = datasets.Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "Name a colour."}],
                "chosen": [{"role": "assistant", "content": "Blue."}],
                "rejected": [{"role": "assistant", "content": "Seven."}],
                "score": 3,
            }
        ]
    )
    (rec,) = from_dataset(ds, domain="colours", source="test")
    assert (rec.prompt, rec.chosen, rec.rejected, rec.domain, rec.source) == (
        "Name a colour.",
        "Blue.",
        "Seven.",
        "colours",
        "test",
    )
    assert rec.meta == {"score": 3}


def test_from_dataset_conversational_implicit_prompt_multi_turn():
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell a joke"},
    ]
    rows = [
        {
            "chosen": [*history, {"role": "assistant", "content": "A pun."}],
            "rejected": [*history, {"role": "assistant", "content": "No."}],
        }
    ]
    (rec,) = from_dataset(rows, domain="chat")
    assert rec.prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell a joke\n\nAssistant:"
    assert (rec.chosen, rec.rejected) == ("A pun.", "No.")


def test_from_dataset_implicit_prompt_text_splits_at_shared_assistant_cue():
    rows = [
        {"chosen": "\n\nHuman: 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: 2+2?\n\nAssistant: 5"}
    ]
    (rec,) = from_trl_rows(rows, domain="math")
    assert (rec.prompt, rec.chosen, rec.rejected) == ("\n\nHuman: 2+2?\n\nAssistant:", " 4", " 5")


def test_from_dataset_missing_domain_names_row_and_field():
    with pytest.raises(DataFormatError) as info:
        from_dataset([{"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert (info.value.field, info.value.line, info.value.reason) == ("domain", 1, "missing_field")


def test_identical_chosen_rejected_policy():
    rows = [
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "a", "rejected": "b"},
    ]
    with pytest.raises(DataFormatError) as info:
        from_trl_rows(rows, domain="d")
    assert (info.value.line, info.value.field, info.value.reason) == (
        1,
        "chosen",
        "identical_chosen_rejected",
    )
    assert "on_invalid='drop'" in str(info.value)
    kept = from_trl_rows(rows, domain="d", on_invalid="drop")
    assert len(kept) == 1 and kept.summary.dropped == {"identical_chosen_rejected": 1}
    assert kept.summary.rows_read == 2


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
@pytest.mark.parametrize("blank", ["", "   \n"])
def test_empty_field_policy(field, blank):
    row = {"prompt": "p", "chosen": "a", "rejected": "b", field: blank}
    with pytest.raises(DataFormatError) as info:
        from_trl_rows([row], domain="d")
    assert (info.value.field, info.value.reason) == (field, "empty_field")
    dropped = from_trl_rows([row], domain="d", on_invalid="drop")
    assert len(dropped) == 0 and dropped.summary.dropped == {f"empty_field:{field}": 1}


def test_wrong_type_is_a_format_error_or_a_lenient_skip():
    rows = [
        {"prompt": "p", "chosen": 3, "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": "b"},
    ]
    with pytest.raises(DataFormatError) as info:
        from_trl_rows(rows, domain="d")
    assert (info.value.field, info.value.reason, info.value.line) == ("chosen", "wrong_type", 1)
    kept = from_trl_rows(rows, domain="d", lenient=True)
    assert len(kept) == 1 and kept.summary.skipped == {"wrong_type:chosen": 1}


def test_on_invalid_and_lenient_are_validated():
    with pytest.raises(ValueError, match="on_invalid"):
        RecordCollector(on_invalid="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lenient"):
        RecordCollector(lenient="yes")  # type: ignore[arg-type]


def test_collector_counts_other_domains():
    c = RecordCollector("x", domains=["books"])
    c.add_preference(None, prompt="p", chosen="a", rejected="b", domain="dvd", source="")
    c.add_preference(None, prompt="p", chosen="a", rejected="b", domain="books", source="")
    result = c.result()
    assert [r.domain for r in result] == ["books"]
    assert result.summary.filtered == {"other_domain": 1}


def test_summary_describe_and_dict():
    s = LoadSummary(source="shp", files=["f"], rows_read=5, records=3)
    s.per_domain.update({"askdocs": 3})
    s.filtered["score_ratio<2.0"] += 2
    d = s.to_dict()
    assert d["filtered"] == {"score_ratio<2.0": 2} and d["records"] == 3
    text = s.describe()
    assert "3 records from 5 rows" in text and "score_ratio<2.0=2" in text
    assert (s.n_filtered, s.n_dropped, s.n_skipped) == (2, 0, 0)


def test_load_result_is_a_sequence():
    result = from_trl_rows(to_trl_rows(PREFS[:2]), domain="d")
    assert len(result) == 2 and result[0].prompt == "Q1?" and result[-1:][0].prompt == "Q2?"
    assert result.domains == ["d"]

"""OASST1, UltraFeedback (binarized), Chatbot Arena and Nectar on upstream-layout fixtures."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oodpl.data.errors import DataFormatError
from oodpl.data.registry import load

# -- OASST1 -------------------------------------------------------------------------------------


def _pairs(result):
    return [(r.meta["chosen_id"], r.meta["rejected_id"]) for r in result]


def test_oasst_messages_adjacent_pairs(fixtures):
    result = load("oasst1", fixtures / "oasst1")
    assert _pairs(result) == [("a1", "a2"), ("a2", "a3"), ("b2", "b1")]
    assert result.summary.filtered == {"deleted": 1, "unranked": 1, "single_ranked_reply": 1}
    assert result.summary.rows_read == 11
    root = result[0]
    assert root.prompt == "What is a monad?" and root.domain == "oasst1"
    assert root.chosen.startswith("A monad is a type")
    follow_up = result[2]
    assert follow_up.prompt == (
        "\n\nHuman: What is a monad?\n\nAssistant: A monad is a type with bind and return "
        "obeying three laws.\n\nHuman: Give an example in Python.\n\nAssistant:"
    )
    assert all(r.meta["rank_chosen"] < r.meta["rank_rejected"] for r in result)


def test_oasst_all_pairs_and_best_worst(fixtures):
    every = load("oasst1", fixtures / "oasst1", pairs="all")
    assert _pairs(every) == [("a1", "a2"), ("a1", "a3"), ("a2", "a3"), ("b2", "b1")]
    extremes = load("oasst1", fixtures / "oasst1", pairs="best_worst")
    assert _pairs(extremes) == [("a1", "a3"), ("b2", "b1")]
    with pytest.raises(ValueError, match="pairs"):
        load("oasst1", fixtures / "oasst1", pairs="some")


def test_oasst_trees_layout_gives_the_same_records(fixtures):
    flat = load("oasst1", fixtures / "oasst1")
    trees = load("oasst", fixtures / "oasst1-trees")
    assert list(trees) == list(flat) and trees.summary.rows_read == 2


def test_oasst_language_filter(fixtures):
    result = load("oasst1", fixtures / "oasst1", languages=["es"])
    assert len(result) == 0
    assert result.summary.filtered["other_language"] == 6
    assert result.summary.filtered["single_ranked_reply"] == 1


def test_oasst_parquet_export_layout(tmp_path, fixtures, jsonl_rows):
    messages = jsonl_rows(fixtures / "oasst1" / "2023-04-12_oasst_ready.messages.jsonl.gz")
    data = tmp_path / "oasst1" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(messages), data / "train-00000-of-00001.parquet")
    result = load("oasst1", tmp_path / "oasst1", split="train")
    assert list(result) == list(load("oasst1", fixtures / "oasst1"))
    with pytest.raises(FileNotFoundError):
        load("oasst1", tmp_path / "oasst1" / "nothing-here")


def test_oasst_parent_with_no_ranked_reply_counts_only_replies(tmp_path, raw_lines):
    rows = [
        {"message_id": "r", "parent_id": None, "role": "prompter", "text": "Q", "lang": "en"},
        {"message_id": "x", "parent_id": "r", "role": "assistant", "text": "A", "rank": None},
        {"message_id": "y", "parent_id": "r", "role": "assistant", "text": "B", "rank": None},
    ]
    path = raw_lines(tmp_path / "m.messages.jsonl", [json.dumps(r) for r in rows])
    result = load("oasst1", path)
    assert len(result) == 0 and result.summary.filtered == {"unranked": 2}


def test_oasst_missing_parent_and_bad_role(fixtures, tmp_path, jsonl_rows, raw_lines):
    messages = jsonl_rows(fixtures / "oasst1" / "2023-04-12_oasst_ready.messages.jsonl.gz")
    orphaned = [m for m in messages if m["message_id"] != "p2"]
    path = raw_lines(tmp_path / "x.messages.jsonl", [json.dumps(m) for m in orphaned])
    with pytest.raises(DataFormatError) as info:
        load("oasst1", path)
    assert (info.value.field, info.value.reason) == ("parent_id", "missing_parent")
    result = load("oasst1", path, lenient=True)
    assert len(result) == 2 and result.summary.skipped == {"missing_parent:parent_id": 1}
    bad = [dict(m, role="bot") if m["message_id"] == "a3" else m for m in messages]
    path = raw_lines(tmp_path / "y.messages.jsonl", [json.dumps(m) for m in bad])
    with pytest.raises(DataFormatError) as info:
        load("oasst1", path)
    assert (info.value.line, info.value.field, info.value.reason) == (4, "role", "bad_value")


# -- UltraFeedback ------------------------------------------------------------------------------


def test_ultrafeedback_binarized(fixtures):
    result = load("ultrafeedback", fixtures / "ultrafeedback")
    assert [(r.prompt, r.chosen, r.rejected) for r in result] == [
        ("Write a haiku about rain.", "Soft rain on tin roofs / ...", "Rain is wet."),
        (
            "Explain recursion briefly.",
            "A function that calls itself on a smaller input.",
            "Recursion is recursion.",
        ),
        ("Name a colour.", "Blue.", "Red."),
    ]
    assert result[0].meta == {"prompt_id": "u1", "score_chosen": 8.5, "score_rejected": 3.0}
    assert result.summary.files[0].endswith("data/train_prefs-00000-of-00001.parquet")


def test_ultrafeedback_options(fixtures):
    root = fixtures / "ultrafeedback"
    no_ties = load("ultrafeedback", root, drop_ties=True)
    assert len(no_ties) == 2 and no_ties.summary.filtered == {"tie": 1}
    gap = load("ultrafeedback", root, min_score_gap=6.0)
    assert [r.meta["prompt_id"] for r in gap] == ["u2"]
    assert gap.summary.filtered == {"score_gap<6.0": 2}
    test = load("ultrafeedback", root, split="test")
    assert [r.chosen for r in test] == ["Paris."]
    regen = load("ultrafeedback", root, domain="ultrafeedback-regenerated")
    assert {r.domain for r in regen} == {"ultrafeedback-regenerated"}
    with pytest.raises(ValueError, match="domain"):
        load("ultrafeedback", root, domain="uf2")


def test_ultrafeedback_last_message_must_be_assistant(tmp_path):
    row = {
        "prompt": "Hi",
        "prompt_id": "x",
        "chosen": [{"role": "user", "content": "Hi"}],
        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        "messages": [],
        "score_chosen": 1.0,
        "score_rejected": 0.0,
    }
    path = tmp_path / "data" / "train_prefs-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist([row]), path)
    with pytest.raises(DataFormatError) as info:
        load("ultrafeedback", tmp_path)
    assert (info.value.unit, info.value.line, info.value.field) == ("row", 1, "chosen")
    assert "row 1" in str(info.value)


# -- Chatbot Arena ------------------------------------------------------------------------------


def test_arena_winners_and_ties(fixtures):
    result = load("chatbot-arena", fixtures / "chatbot_arena")
    assert [(r.prompt, r.chosen, r.rejected) for r in result] == [
        ("Hi, who are you?", "I am Vicuna.", "Koala here."),
        ("2+2?", "4", "5"),
    ]
    assert result[1].meta["model_chosen"] == "koala-13b"
    assert result.summary.filtered == {"tie": 1, "tie (bothbad)": 1, "multi_turn": 1}


def test_arena_first_turn_and_languages(fixtures):
    first = load("arena", fixtures / "chatbot_arena", multi_turn="first_turn")
    assert len(first) == 3
    assert (first[2].prompt, first[2].chosen, first[2].rejected) == (
        "Tell a joke",
        "Why did the chicken cross the road?",
        "No.",
    )
    german = load("arena", fixtures / "chatbot_arena", languages=["German"])
    assert len(german) == 0 and german.summary.filtered["other_language"] == 3


def test_arena_unknown_winner(tmp_path, fixtures):
    table = pq.read_table(next((fixtures / "chatbot_arena" / "data").glob("*.parquet")))
    rows = table.to_pylist()
    rows[1]["winner"] = "model_c"
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataFormatError) as info:
        load("arena", path)
    assert (info.value.line, info.value.field) == (2, "winner")


# -- Nectar -------------------------------------------------------------------------------------


def test_nectar_adjacent_pairs(fixtures):
    result = load("nectar", fixtures / "nectar")
    ranks = [(r.meta["rank_chosen"], r.meta["rank_rejected"]) for r in result]
    assert ranks == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (1, 2)]
    assert all(r.chosen == f"Answer ranked {int(r.meta['rank_chosen'])}." for r in result[:6])
    assert result[0].prompt == "\n\nHuman: How do I make tea?\n\nAssistant:"
    assert result.summary.filtered == {"rank_tie": 1}


@pytest.mark.parametrize(
    ("pairs", "n_first", "n_second", "ties"), [("all", 21, 2, 1), ("best_worst", 1, 1, 0)]
)
def test_nectar_pairings(fixtures, pairs, n_first, n_second, ties):
    result = load("nectar", fixtures / "nectar", pairs=pairs)
    first = [r for r in result if "tea" in r.prompt]
    assert len(first) == n_first and len(result) - n_first == n_second
    assert all(r.meta["rank_chosen"] < r.meta["rank_rejected"] for r in result)
    assert result.summary.filtered.get("rank_tie", 0) == ties


def test_nectar_missing_rank(tmp_path, raw_lines):
    row = {"prompt": "Q", "answers": [{"answer": "a", "model": "m", "rank": 1.0}, {"answer": "b"}]}
    path = raw_lines(tmp_path / "nectar.jsonl", [json.dumps(row)])
    with pytest.raises(DataFormatError) as info:
        load("nectar", path)
    assert (info.value.field, info.value.reason) == ("answers[1].rank", "missing_field")

"""Anthropic HH-RLHF loader on a gzipped <subset>/<split>.jsonl.gz fixture."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oodpl.data.errors import DataFormatError
from oodpl.data.registry import load
from oodpl.data.sources._dialogue import split_shared_prefix
from oodpl.data.sources.hh_rlhf import HH_DOMAINS


def test_loads_each_subset_as_a_domain(fixtures, jsonl_rows):
    result = load("hh-rlhf", fixtures / "hh-rlhf")
    assert result.summary.per_domain == {
        "harmless-base": 2,
        "helpful-base": 2,
        "helpful-online": 1,
        "helpful-rejection-sampled": 1,
    }
    raw = {}
    for domain in HH_DOMAINS:
        raw[domain] = jsonl_rows(fixtures / "hh-rlhf" / domain / "train.jsonl.gz")
    for rec in result:
        # Lossless split: prompt + reply reproduces the upstream dialogue exactly.
        assert {"chosen": rec.prompt + rec.chosen, "rejected": rec.prompt + rec.rejected} in raw[
            rec.domain
        ]
        assert rec.prompt.endswith("\n\nAssistant:")
        assert rec.source == "hh-rlhf"


def test_multi_turn_prompt_keeps_the_shared_history(fixtures):
    result = load("hh-rlhf", fixtures / "hh-rlhf", domains=["helpful-base"])
    multi = [r for r in result if "Science fiction" in r.prompt]
    assert len(multi) == 1
    rec = multi[0]
    assert rec.prompt == (
        "\n\nHuman: Suggest a book.\n\nAssistant: What genre do you like?"
        "\n\nHuman: Science fiction.\n\nAssistant:"
    )
    assert rec.chosen == " Try 'The Left Hand of Darkness'."
    assert rec.rejected == " Any book is fine."


def test_test_split_and_alias(fixtures):
    result = load("hh", fixtures / "hh-rlhf", split="test")
    assert [(r.domain, r.chosen, r.rejected) for r in result] == [("helpful-base", " 4.", " 5.")]


def test_requested_subset_without_file(fixtures):
    with pytest.raises(FileNotFoundError, match="harmless-base"):
        load("hh-rlhf", fixtures / "hh-rlhf", split="test", domains=["harmless-base"])


def test_single_file_takes_domain_from_its_directory(fixtures, tmp_path):
    result = load("hh-rlhf", fixtures / "hh-rlhf" / "helpful-online" / "train.jsonl.gz")
    assert [r.domain for r in result] == ["helpful-online"]
    stray = tmp_path / "train.jsonl.gz"
    stray.write_bytes((fixtures / "hh-rlhf" / "helpful-online" / "train.jsonl.gz").read_bytes())
    with pytest.raises(ValueError, match="subset"):
        load("hh-rlhf", stray)


def _write_gz(path, rows):
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0))


def test_truncated_download(fixture_copy):
    root = fixture_copy("hh-rlhf")
    path = root / "harmless-base" / "train.jsonl.gz"
    rows = [
        {
            "chosen": f"\n\nHuman: q{i}\n\nAssistant: yes {i}" + "x" * (i * 37 % 101),
            "rejected": f"\n\nHuman: q{i}\n\nAssistant: no {i}",
        }
        for i in range(300)
    ]
    _write_gz(path, rows)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(DataFormatError) as info:
        load("hh-rlhf", root)
    assert info.value.reason == "truncated_file" and info.value.path == str(path)
    result = load("hh-rlhf", root, lenient=True)
    assert result.summary.skipped == {"truncated_file": 1}
    assert 0 < result.summary.per_domain["harmless-base"] < 300
    assert result.summary.per_domain["helpful-base"] == 2


def test_no_shared_assistant_prefix_names_field(fixture_copy):
    root = fixture_copy("hh-rlhf")
    path = root / "helpful-online" / "train.jsonl.gz"
    _write_gz(path, [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "something else"}])
    with pytest.raises(DataFormatError) as info:
        load("hh-rlhf", root)
    assert (info.value.line, info.value.field, info.value.path) == (1, "chosen", str(path))


def test_identical_pair_policy_and_missing_field(fixture_copy):
    root = fixture_copy("hh-rlhf")
    path = root / "helpful-online" / "train.jsonl.gz"
    same = "\n\nHuman: a\n\nAssistant: b"
    _write_gz(path, [{"chosen": same, "rejected": same}, {"chosen": same}])
    with pytest.raises(DataFormatError) as info:
        load("hh-rlhf", root)
    assert info.value.reason == "identical_chosen_rejected"
    result = load("hh-rlhf", root, on_invalid="drop", lenient=True)
    assert result.summary.dropped == {"identical_chosen_rejected": 1}
    assert result.summary.skipped == {"missing_field:rejected": 1}


_text = st.text(alphabet="ab \n", max_size=12)


@given(history=st.lists(st.tuples(_text, _text), max_size=3), q=_text, a=_text, b=_text)
def test_split_shared_prefix_is_lossless(history, q, a, b):
    prefix = "".join(f"\n\nHuman: {h}\n\nAssistant: {r}" for h, r in history)
    chosen = f"{prefix}\n\nHuman: {q}\n\nAssistant: {a}"
    rejected = f"{prefix}\n\nHuman: {q}\n\nAssistant: {b}"
    prompt, c, r = split_shared_prefix(chosen, rejected)
    assert prompt + c == chosen and prompt + r == rejected
    assert prompt.endswith("\n\nAssistant:")
    # The prompt holds at least everything up to the final assistant cue of the shared dialogue.
    assert len(prompt) >= len(f"{prefix}\n\nHuman: {q}\n\nAssistant:")

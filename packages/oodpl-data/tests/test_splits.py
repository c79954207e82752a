"""OOD protocols: the documented folds, splitting by prompt, determinism, per-domain parts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.data.records import Completion, Preference
from oodpl.data.sources.hh_rlhf import HH_DOMAINS
from oodpl.data.sources.shp import SHP_DOMAINS
from oodpl.data.splits import (
    SHP_GROUPS,
    DomainSplitSizes,
    Fold,
    apply_fold,
    dporm_settings,
    leave_one_domain_out,
    per_domain_splits,
    prompt_key,
    shp_group_folds,
    split_domain,
    train_test_split_by_prompt,
)


def pref(prompt, domain, i=0):
    return Preference(prompt, f"good {i}", f"bad {i}", domain, "test")


def held_out_keys(split):
    return {prompt_key(r.prompt) for r in split.all_test}


def train_keys(split):
    return {prompt_key(r.prompt) for r in split.train}


# -- fold definitions ---------------------------------------------------------------------------


def test_leave_one_domain_out_sentiment_domains():
    folds = leave_one_domain_out()
    assert [f.test_domains for f in folds] == [("books",), ("dvd",), ("electronics",), ("kitchen",)]
    for fold in folds:
        assert len(fold.train_domains) == 3
        assert set(fold.train_domains) | set(fold.test_domains) == {
            "books",
            "dvd",
            "electronics",
            "kitchen",
        }
    with pytest.raises(ValueError, match="domains"):
        leave_one_domain_out(["books"])


def test_shp_six_groups_of_three_match_methods():
    assert SHP_GROUPS[0] == ("askacademia", "askanthropology", "askbaking")
    assert SHP_GROUPS[5] == ("changemyview", "explainlikeimfive", "legaladvice")
    folds = shp_group_folds()
    assert len(folds) == 6
    assert sorted(d for f in folds for d in f.test_domains) == sorted(SHP_DOMAINS)
    for fold, group in zip(folds, SHP_GROUPS, strict=True):
        assert fold.test_domains == group and len(fold.train_domains) == 15
        assert set(fold.train_domains) == set(SHP_DOMAINS) - set(group)
    with pytest.raises(ValueError, match="unknown SHP"):
        shp_group_folds([("askfoo", "askbar", "askbaz")])


def test_dporm_settings():
    settings_ = dporm_settings()
    assert list(settings_) == ["I(a)", "I(b)", "I(c)", "II(a)", "II(b)"]
    ia = settings_["I(a)"]
    assert ia.train_domains == ("ultrafeedback",)
    assert [g for g, _ in ia.test_groups] == [
        "chatbot_arena",
        "hh-rlhf",
        "nectar",
        "webgpt",
        "summarize",
    ]
    assert dict(ia.test_groups)["hh-rlhf"] == HH_DOMAINS
    assert dict(ia.test_groups)["summarize"] == ("tldr", "cnn", "dailymail")
    assert settings_["I(b)"].train_domains == ("chatbot_arena",)
    assert settings_["I(c)"].train_domains == HH_DOMAINS
    assert "ultrafeedback" in settings_["I(c)"].test_domains
    for name in ("I(a)", "I(b)", "I(c)"):
        assert len(settings_[name].test_groups) == 5
    assert settings_["II(a)"].test_domains == ("ultrafeedback-regenerated",)
    iib = settings_["II(b)"]
    assert (iib.train_domains, dict(iib.test_groups)) == (
        ("tldr",),
        {"cnn": ("cnn",), "dailymail": ("dailymail",)},
    )
    assert all(f.id_test_fraction == 0.1 for f in settings_.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_domains": ()}, "train_domains"),
        ({"test_domains": ("a",)}, "also training"),
        ({"test_groups": (("x", ("b",)),), "test_domains": ("b", "c")}, "partition"),
        ({"id_test_fraction": 1.0}, "id_test_fraction"),
        ({"test_domains": ()}, "nothing to test"),
    ],
)
def test_fold_validation(kwargs, match):
    base = {"name": "f", "train_domains": ("a",), "test_domains": ("b",)}
    with pytest.raises(ValueError, match=match):
        Fold(**{**base, **kwargs})


# -- applying folds -----------------------------------------------------------------------------


def test_apply_fold_drops_train_records_sharing_a_test_prompt():
    records = [
        pref("shared question", "books"),
        pref("shared  question", "dvd", 1),  # whitespace variant of the same prompt
        pref("only books", "books", 2),
        pref("only dvd", "dvd", 3),
        pref("other", "kitchen"),
    ]
    fold = Fold("f", ("books",), ("dvd",))
    split = apply_fold(fold, records)
    assert [r.prompt for r in split.train] == ["only books"]
    assert [r.prompt for r in split.test["test"]] == ["shared  question", "only dvd"]
    assert (split.n_overlap_dropped, split.n_unused) == (1, 1)
    assert split.empty_domains == ()
    assert apply_fold(Fold("g", ("books",), ("toys",)), records).empty_domains == ("toys",)


def test_apply_fold_id_test_is_prompt_disjoint_and_seeded():
    records = [pref(f"q{i % 30}", "tldr", i) for i in range(90)] + [pref("n1", "cnn")]
    fold = dporm_settings(id_test_fraction=0.2)["II(b)"]
    split = apply_fold(fold, records, seed=3)
    assert len({prompt_key(r.prompt) for r in split.id_test}) == 6
    assert not train_keys(split) & held_out_keys(split)
    assert len(split.train) + len(split.id_test) == 90
    assert split.test == {"cnn": [records[-1]], "dailymail": []}
    assert "dailymail" in split.empty_domains
    again = apply_fold(fold, list(reversed(records)), seed=3)
    assert {r.prompt for r in again.id_test} == {r.prompt for r in split.id_test}
    other = apply_fold(fold, records, seed=4)
    assert {r.prompt for r in other.id_test} != {r.prompt for r in split.id_test}


def test_train_test_split_by_prompt():
    records = [pref(f"q{i % 10}", "d", i) for i in range(40)]
    train, test = train_test_split_by_prompt(records, 0.3, seed=1)
    assert len({r.prompt for r in test}) == 3 and len(train) + len(test) == 40
    assert not {r.prompt for r in train} & {r.prompt for r in test}
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    again = train_test_split_by_prompt(shuffled, 0.3, seed=1)[1]
    assert sorted(again, key=repr) == sorted(test, key=repr)  # membership ignores input order
    tiny_train, tiny_test = train_test_split_by_prompt(records[:2], 0.01)
    assert len(tiny_train) == len(tiny_test) == 1
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split_by_prompt(records, 1.5)
    with pytest.raises(TypeError, match="seed"):
        train_test_split_by_prompt(records, 0.5, seed="1")  # type: ignore[arg-type]


_prompts = st.sampled_from(["a", "b", "c", "a ", " b", "d\ne", "d e", "f", "g", "h"])
_domains = st.sampled_from(["books", "dvd", "electronics", "kitchen"])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(_prompts, _domains), min_size=1, max_size=40),
    seed=st.integers(0, 5),
    fraction=st.sampled_from([0.0, 0.25, 0.5]),
)
def test_no_prompt_in_both_train_and_test_of_any_fold(rows, seed, fraction):
    records = [pref(p, d, i) for i, (p, d) in enumerate(rows)]
    for fold in leave_one_domain_out(id_test_fraction=fraction):
        split = apply_fold(fold, records, seed=seed)
        assert not train_keys(split) & held_out_keys(split)
        kept = len(split.train) + len(split.all_test)
        assert kept + split.n_overlap_dropped + split.n_unused == len(records)
        assert all(r.domain in fold.train_domains for r in split.train + split.id_test)
        assert all(r.domain in fold.test_domains for r in split.test["test"])


# -- per-domain parts (METHODS §3) ----------------------------------------------------------


def test_paper_sizes_default():
    sizes = DomainSplitSizes()
    assert (sizes.fine_tuning, sizes.preference_train, sizes.eval_reference) == (1000, 500, 500)
    assert sizes.eval_preference == 500
    with pytest.raises(ValueError, match="fine_tuning"):
        DomainSplitSizes(fine_tuning=-1)


def test_split_domain_sizes_and_disjointness():
    prefs = [pref(f"q{i // 2}", "books", i) for i in range(200)]  # 100 prompts, 2 pairs each
    sizes = DomainSplitSizes(
        fine_tuning=60, preference_train=40, eval_reference=20, eval_preference=30
    )
    split = split_domain(prefs, sizes=sizes, seed=7)
    assert len(split.eval_preference) == 30 and len(split.preference_train) == 40
    assert len(split.eval_reference) == 20 and len(split.fine_tuning) == 60
    assert split.shortfall == {}
    assert all(isinstance(c, Completion) for c in split.eval_reference + split.fine_tuning)
    parts = [split.eval_preference, split.eval_reference, split.preference_train, split.fine_tuning]
    keys = [{prompt_key(r.prompt) for r in part} for part in parts]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not keys[i] & keys[j]
    assert len(keys[1]) == 20  # one reference per prompt
    ref = split.eval_reference[0]
    assert ref.meta["rejected"].startswith("bad")
    same = split_domain(list(reversed(prefs)), sizes=sizes, seed=7)
    assert same == split


def test_split_domain_with_completions_and_shortfall():
    prefs = [pref(f"q{i}", "dvd", i) for i in range(10)]
    comps = [Completion(f"q{i}", f"review {i}", "dvd") for i in range(20)]
    sizes = DomainSplitSizes(
        fine_tuning=15, preference_train=3, eval_reference=2, eval_preference=2
    )
    split = split_domain(prefs, completions=comps, sizes=sizes)
    eval_keys = {r.prompt for r in split.eval_preference + split.eval_reference}
    assert not eval_keys & {c.prompt for c in split.fine_tuning}
    assert len(split.fine_tuning) == 15 and split.shortfall == {}
    small = split_domain(prefs[:4], sizes=sizes)
    assert small.shortfall == {"fine_tuning": 15, "preference_train": 3}
    with pytest.raises(ValueError, match="too small"):
        split_domain(prefs[:4], sizes=sizes, strict=True)
    with pytest.raises(ValueError, match="exactly one domain"):
        split_domain([pref("a", "dvd"), pref("b", "books")])


def test_per_domain_splits_every_domain():
    prefs = [pref(f"{d}-{i}", d, i) for d in ("books", "kitchen") for i in range(12)]
    sizes = DomainSplitSizes(fine_tuning=3, preference_train=3, eval_reference=3, eval_preference=3)
    splits = per_domain_splits(prefs, sizes=sizes, seed=1)
    assert list(splits) == ["books", "kitchen"]
    assert all(not s.shortfall for s in splits.values())
    with pytest.raises(ValueError, match="completions"):
        per_domain_splits(prefs, completions=[Completion("x", "y", "toys")])

"""The synthetic benchmark: shape, determinism, splits, gold reward (SYNTHETIC.md)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.records import Completion, Preference
from oodpl.data.synthetic import (
    BUILTIN_LEXICONS,
    SHARED_SENTIMENT,
    SyntheticConfig,
    generate_benchmark,
    lexicon_for,
    load_synthetic,
    words,
)
from oodpl.data.synthetic.generator import domain_prompts, split_prompts
from oodpl.data.synthetic.lexicon import NEUTRAL_ADJECTIVES

SMALL = {"n_finetune": 60, "n_pref_train": 40, "n_eval_reference": 20, "n_eval_pref": 30}


@pytest.fixture(scope="module")
def bench():
    return generate_benchmark(SyntheticConfig(**SMALL, seed=7))


def test_sizes_fields_and_lengths(bench):
    for domain in bench.domains:
        assert len(bench.finetune[domain]) == SMALL["n_finetune"]
        assert len(bench.pref_train[domain]) == SMALL["n_pref_train"]
        assert len(bench.eval_reference[domain]) == SMALL["n_eval_reference"]
        assert len(bench.eval_pref[domain]) == SMALL["n_eval_pref"]
        for completion in bench.finetune[domain] + bench.eval_reference[domain]:
            assert isinstance(completion, Completion)
            assert completion.domain == domain and completion.source == "synthetic"
            assert 8 <= len(completion.response.split()) <= 40
        for pair in bench.pref_train[domain] + bench.eval_pref[domain]:
            assert isinstance(pair, Preference)
            assert pair.domain == domain and pair.source == "synthetic"
            for text in (pair.chosen, pair.rejected):
                assert 8 <= len(text.split()) <= 40


def test_deterministic_by_seed_and_independent_of_other_domains(bench):
    again = generate_benchmark(SyntheticConfig(**SMALL, seed=7))
    other_seed = generate_benchmark(SyntheticConfig(**SMALL, seed=8))
    kitchen_only = generate_benchmark(SyntheticConfig(**SMALL, seed=7, domains=("kitchen",)))
    for split in ("finetune", "pref_train", "eval_reference", "eval_pref"):
        dump = [r.to_dict() for r in bench.records(split)]
        assert dump == [r.to_dict() for r in again.records(split)]
        assert dump != [r.to_dict() for r in other_seed.records(split)]
        assert [r.to_dict() for r in bench.records(split, ["kitchen"])] == [
            r.to_dict() for r in kitchen_only.records(split)
        ]


def test_eval_prompts_disjoint_from_training_prompts(bench):
    for domain in bench.domains:
        train = {r.prompt for r in bench.finetune[domain] + bench.pref_train[domain]}
        evaluation = {r.prompt for r in bench.eval_reference[domain] + bench.eval_pref[domain]}
        assert train and evaluation
        assert not train & evaluation
        train_pool, eval_pool = split_prompts(bench.config, domain)
        assert train <= set(train_pool) and evaluation <= set(eval_pool)
        assert len(eval_pool) == math.ceil(0.25 * len(domain_prompts(lexicon_for(domain))))


def test_preference_meta_is_the_bradley_terry_truth(bench):
    temperature = bench.config.temperature
    for pair in bench.records("pref_train") + bench.records("eval_pref"):
        gold_chosen = bench.gold(pair.prompt, pair.chosen, pair.domain)
        gold_rejected = bench.gold(pair.prompt, pair.rejected)  # domain inferred from the prompt
        assert pair.meta["gold_chosen"] == pytest.approx(gold_chosen, abs=1e-12)
        assert pair.meta["gold_rejected"] == pytest.approx(gold_rejected, abs=1e-12)
        expected = 1 / (1 + math.exp(-(gold_chosen - gold_rejected) / temperature))
        assert pair.meta["p_true"] == pytest.approx(expected, rel=1e-9)
    for completion in bench.records("finetune") + bench.records("eval_reference"):
        assert completion.meta["gold"] == pytest.approx(
            bench.gold(completion.prompt, completion.response), abs=1e-12
        )


def test_gold_reward_by_hand():
    gold = SyntheticConfig().gold_reward()
    prompt = "i read this thriller last week and"
    response = "The plot was GRIPPING, but the ending felt terrible!"  # 9 words
    parts = gold.breakdown(prompt, response)
    assert parts.domain == "books"
    assert parts.shared == pytest.approx(0.5 * -1.0)  # terrible
    assert parts.drift == pytest.approx(0.5 * 1.0)  # gripping (books)
    assert parts.length == pytest.approx(0.6 * (9 - 24) / 16)
    assert gold(prompt, response) == pytest.approx(parts.shared + parts.drift + parts.length)
    # Unknown words score 0; only the length term sees them; clipped beyond 40 words.
    assert gold.breakdown(prompt, "zzz qqq xyzzy").shared == 0.0
    long_text = " ".join(["blah"] * 200)
    assert gold(prompt, long_text) == pytest.approx(0.6 * 1.0)
    # The same words in another domain: drift differs, shared does not.
    electronics = gold.breakdown("i bought this laptop yesterday and", response)
    assert electronics.domain == "electronics"
    assert electronics.shared == parts.shared and electronics.drift == 0.0


def test_flip_words_change_sign_across_domains():
    assert lexicon_for("books").drift["light"] < 0 < lexicon_for("electronics").drift["light"]
    assert lexicon_for("electronics").drift["heavy"] < 0 < lexicon_for("kitchen").drift["heavy"]
    assert lexicon_for("dvd").drift["long"] < 0 < lexicon_for("books").drift["long"]


def test_lexicons_are_consistent():
    for lexicon in BUILTIN_LEXICONS.values():
        for word in lexicon.drift:
            assert word not in SHARED_SENTIMENT and word not in NEUTRAL_ADJECTIVES
        assert lexicon.positive_words and lexicon.negative_words


def test_vocabulary_is_a_few_hundred_words(bench):
    vocabulary = {word for text in bench.texts() for word in words(text)}
    assert 100 < len(vocabulary) < 400


def test_domain_of_every_prompt_and_errors():
    config = SyntheticConfig(domains=(*BUILTIN_LEXICONS, "garden"), **SMALL)
    gold = config.gold_reward()
    for domain in config.domains:
        for prompt in domain_prompts(lexicon_for(domain)):
            assert gold.domain_of(prompt) == domain
    with pytest.raises(ValueError, match="pass domain="):
        gold.domain_of("what is the capital of france")
    with pytest.raises(TypeError, match="prompt"):
        gold(None, "text")  # type: ignore[arg-type]


def test_derived_domain_is_deterministic_and_usable():
    first, second = lexicon_for("garden"), lexicon_for("garden")
    assert first == second and first.name == "garden"
    assert first != lexicon_for("pets")
    bench = generate_benchmark(SyntheticConfig(domains=("garden", "books"), **SMALL))
    assert len(bench.pref_train["garden"]) == SMALL["n_pref_train"]
    with pytest.raises(ValueError, match="Garden!"):
        SyntheticConfig(domains=("Garden!",))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_finetune": -1}, "n_finetune"),
        ({"n_eval_pref": 2.5}, "n_eval_pref"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"eval_prompt_fraction": 1.0}, "eval_prompt_fraction"),
        ({"domains": ()}, "domains"),
        ({"domains": ("books", "books")}, "domains"),
        ({"domains": "books"}, "domains"),
        ({"min_words": 30, "max_words": 34}, "min_words"),
        ({"sentiment_rate": 1.5}, "sentiment_rate"),
        ({"length_preference": {"books": float("inf")}}, "length_preference"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field):
        SyntheticConfig(**kwargs)


def test_load_synthetic_splits_aliases_and_errors():
    pairs = load_synthetic(["kitchen"], "pref_train", seed=3, **SMALL)
    assert len(pairs) == SMALL["n_pref_train"] and {p.domain for p in pairs} == {"kitchen"}
    assert [p.to_dict() for p in load_synthetic("kitchen", "train", seed=3, **SMALL)] == [
        p.to_dict() for p in pairs
    ]
    completions = load_synthetic(None, "finetune", seed=3, **SMALL)
    assert {c.domain for c in completions} == {"books", "dvd", "electronics", "kitchen"}
    assert all(isinstance(c, Completion) for c in completions)
    with pytest.raises(ValueError, match="split"):
        load_synthetic(split="bogus")
    with pytest.raises(TypeError, match="n_pairs"):
        load_synthetic(n_pairs=3)
    with pytest.raises(ValueError, match="toys"):
        generate_benchmark(SyntheticConfig(domains=("books",), **SMALL)).records(
            "finetune", ["toys"]
        )


def test_lower_temperature_gives_cleaner_labels():
    def expected_agreement(temperature: float) -> float:
        config = SyntheticConfig(domains=("dvd",), temperature=temperature, **SMALL)
        pairs = generate_benchmark(config).records("pref_train")
        return sum(max(p.meta["p_true"], 1 - p.meta["p_true"]) for p in pairs) / len(pairs)

    assert expected_agreement(0.1) > expected_agreement(0.5) > expected_agreement(2.0) > 0.5


_VOCAB = sorted(
    set(SHARED_SENTIMENT) | set(lexicon_for("kitchen").drift) | {"pan", "the", "was", "zzz"}
)


@settings(max_examples=60, deadline=None)
@given(
    first=st.lists(st.sampled_from(_VOCAB), min_size=1, max_size=20),
    second=st.lists(st.sampled_from(_VOCAB), min_size=1, max_size=20),
    upper=st.booleans(),
)
def test_word_sums_are_additive_and_case_insensitive(first, second, upper):
    gold = SyntheticConfig().gold_reward()
    prompt = "we bought this grill yesterday and"
    a, b = " ".join(first), " ".join(second)
    joined = f"{a}, {b}."
    both = gold.breakdown(prompt, joined.upper() if upper else joined)
    parts_a, parts_b = gold.breakdown(prompt, a), gold.breakdown(prompt, b)
    assert both.shared == pytest.approx(parts_a.shared + parts_b.shared, abs=1e-9)
    assert both.drift == pytest.approx(parts_a.drift + parts_b.drift, abs=1e-9)
    n_words = len(first) + len(second)
    assert both.length == pytest.approx(0.3 * max(-1.0, min(1.0, (n_words - 24) / 16)))
    expected_shared = 0.5 * sum(SHARED_SENTIMENT.get(w, 0.0) for w in first + second)
    assert both.shared == pytest.approx(expected_shared, abs=1e-9)

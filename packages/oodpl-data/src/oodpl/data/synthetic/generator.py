"""Sampling the synthetic benchmark's records (SYNTHETIC.md "Records produced per domain").

Per domain ``d``:
- prompts ``x`` = "<opener> this <product> <time phrase> and"; a fixed ``eval_prompt_fraction``
  of the domain's prompt universe is reserved for the eval splits (disjoint from training);
- responses ``y`` ~ ``p_d(y|x)``: 8–40 words of clauses ("the plot was gripping"), a latent tone
  ``τ ~ U(0, 1)`` per response, each clause adjective sentiment-bearing with probability
  ``sentiment_rate``, drawn from the domain's drift words with probability ``drift_share`` (else
  the shared lexicon), positive with probability ``τ`` (else negative);
- preference pairs: two responses to one prompt, ``y_1`` labelled chosen with probability
  ``p = σ((r*(y_1) − r*(y_2))/T)`` (Bradley–Terry); ``meta["p_true"]`` is the true
  ``P(chosen ≻ rejected)`` and ``meta["gold_chosen"]``/``meta["gold_rejected"]`` the gold rewards;
- eval-reference completions: the Bradley–Terry-preferred answer of a pair on an eval prompt, i.e.
  the "test set's preferred answers" the LLM-judge win rate compares against (METHODS §3).

Every (seed, domain, split) has its own ``random.Random`` stream (string-seeded, so identical in
every process), so a domain's records do not depend on which other domains or sizes are chosen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from oodpl.core.records import Completion, Preference

from .config import SyntheticConfig
from .gold import GoldReward, sigmoid
from .lexicon import (
    CONNECTORS,
    INTENSIFIERS,
    NEUTRAL_ADJECTIVES,
    SHARED_SENTIMENT,
    TIME_PHRASES,
    DomainLexicon,
    lexicon_for,
)

SOURCE = "synthetic"
SPLITS: tuple[str, ...] = ("finetune", "pref_train", "eval_reference", "eval_pref")
SplitName = Literal["finetune", "pref_train", "eval_reference", "eval_pref"]

#: Clause templates; "{n}" is an aspect noun, "{a}" an (optionally intensified) adjective.
_CLAUSES: tuple[str, ...] = (
    "the {n} was {a}",
    "the {n} felt {a}",
    "the {n} is {a}",
    "i found the {n} {a}",
    "the {n} seemed {a} to me",
    "honestly the {n} was {a}",
    "{a} {n} overall",
    "it has a {a} {n}",
    "we thought the {n} looked {a}",
)
_INTENSIFY_RATE = 0.25
_MAX_RESAMPLE = 100

_SHARED_POSITIVE = tuple(w for w, v in SHARED_SENTIMENT.items() if v > 0)
_SHARED_NEGATIVE = tuple(w for w, v in SHARED_SENTIMENT.items() if v < 0)


def domain_prompts(lexicon: DomainLexicon) -> list[str]:
    """Every prompt of a domain, in a fixed order (openers × products × time phrases)."""
    return [
        f"{opener} this {product} {time} and"
        for opener in lexicon.openers
        for product in lexicon.products
        for time in TIME_PHRASES
    ]


def split_prompts(config: SyntheticConfig, domain: str) -> tuple[list[str], list[str]]:
    """``(train_prompts, eval_prompts)``: a seeded shuffle, the first fraction goes to eval."""
    prompts = domain_prompts(lexicon_for(domain))
    random.Random(f"oodpl-synthetic:{config.seed}:{domain}:prompts").shuffle(prompts)
    n_eval = max(1, math.ceil(config.eval_prompt_fraction * len(prompts)))
    if n_eval >= len(prompts):
        raise ValueError(
            f"SyntheticConfig.eval_prompt_fraction leaves no training prompt for {domain}"
        )
    return prompts[n_eval:], prompts[:n_eval]


def sample_response(rng: random.Random, lexicon: DomainLexicon, config: SyntheticConfig) -> str:
    """One response of ``min_words``–``max_words`` words from the domain's natural distribution."""
    target = rng.randint(config.min_words, config.max_words)
    tone = rng.random()
    positive = (lexicon.positive_words, _SHARED_POSITIVE)
    negative = (lexicon.negative_words, _SHARED_NEGATIVE)
    out: list[str] = []
    while len(out) < target:
        if rng.random() < config.sentiment_rate:
            pools = positive if rng.random() < tone else negative
            pool = pools[0] if rng.random() < config.drift_share else pools[1]
            adjective = rng.choice(pool)
        else:
            adjective = rng.choice(NEUTRAL_ADJECTIVES)
        if rng.random() < _INTENSIFY_RATE:
            adjective = f"{rng.choice(INTENSIFIERS)} {adjective}"
        clause = rng.choice(_CLAUSES).format(n=rng.choice(lexicon.nouns), a=adjective).split()
        if out:
            clause.insert(0, rng.choice(CONNECTORS))
        if len(out) + len(clause) > config.max_words:
            break  # clauses have at most 8 words, so len(out) > max_words - 8 >= min_words here
        out.extend(clause)
    return " ".join(out)


@dataclass(frozen=True)
class SyntheticBenchmark:
    """The generated benchmark: per-domain record lists and the exact gold reward.

    ``finetune[d]`` / ``eval_reference[d]``: lists of :class:`Completion`;
    ``pref_train[d]`` / ``eval_pref[d]``: lists of :class:`Preference`.
    """

    config: SyntheticConfig
    gold: GoldReward
    finetune: dict[str, list[Completion]]
    pref_train: dict[str, list[Preference]]
    eval_reference: dict[str, list[Completion]]
    eval_pref: dict[str, list[Preference]]

    @property
    def domains(self) -> tuple[str, ...]:
        return self.config.domains

    def records(
        self, split: str, domains: Sequence[str] | None = None
    ) -> list[Completion] | list[Preference]:
        """The records of ``split`` for ``domains`` (all by default), domain by domain."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        chosen = self.domains if domains is None else tuple(domains)
        unknown = [name for name in chosen if name not in self.domains]
        if unknown:
            raise ValueError(f"domains {unknown} are not in this benchmark ({list(self.domains)})")
        per_domain = getattr(self, split)
        return [record for name in chosen for record in per_domain[name]]

    def texts(self) -> list[str]:
        """Every prompt and response once (training text for a local BPE tokenizer)."""
        seen: dict[str, None] = {}
        for name in self.domains:
            for prompt in domain_prompts(lexicon_for(name)):
                seen.setdefault(prompt, None)
            for completion in self.finetune[name] + self.eval_reference[name]:
                seen.setdefault(completion.response, None)
            for pair in self.pref_train[name] + self.eval_pref[name]:
                seen.setdefault(pair.chosen, None)
                seen.setdefault(pair.rejected, None)
        return list(seen)


def generate_benchmark(config: SyntheticConfig | None = None) -> SyntheticBenchmark:
    """Generate every split of every domain of ``config`` (deterministic in ``config``)."""
    config = SyntheticConfig() if config is None else config
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    gold = config.gold_reward()
    splits: dict[str, dict[str, list]] = {name: {} for name in SPLITS}
    for domain in config.domains:
        lexicon = gold.lexicon(domain)
        train_prompts, eval_prompts = split_prompts(config, domain)

        def stream(split: str, domain: str = domain) -> random.Random:
            return random.Random(f"oodpl-synthetic:{config.seed}:{domain}:{split}")

        rng = stream("finetune")
        splits["finetune"][domain] = [
            _completion(rng, rng.choice(train_prompts), lexicon, config, gold, index)
            for index in range(config.n_finetune)
        ]
        for split, prompts, size in (
            ("pref_train", train_prompts, config.n_pref_train),
            ("eval_pref", eval_prompts, config.n_eval_pref),
        ):
            rng = stream(split)
            splits[split][domain] = [
                _preference(rng, rng.choice(prompts), lexicon, config, gold, index)
                for index in range(size)
            ]
        rng = stream("eval_reference")
        splits["eval_reference"][domain] = [
            _reference(_preference(rng, rng.choice(eval_prompts), lexicon, config, gold, index))
            for index in range(config.n_eval_reference)
        ]
    return SyntheticBenchmark(config=config, gold=gold, **splits)


def _completion(
    rng: random.Random,
    prompt: str,
    lexicon: DomainLexicon,
    config: SyntheticConfig,
    gold: GoldReward,
    index: int,
) -> Completion:
    response = sample_response(rng, lexicon, config)
    meta = {"gold": gold(prompt, response, lexicon.name), "index": index}
    return Completion(prompt, response, lexicon.name, source=SOURCE, meta=meta)


def _preference(
    rng: random.Random,
    prompt: str,
    lexicon: DomainLexicon,
    config: SyntheticConfig,
    gold: GoldReward,
    index: int,
) -> Preference:
    first = sample_response(rng, lexicon, config)
    second = sample_response(rng, lexicon, config)
    for _ in range(_MAX_RESAMPLE):
        if second != first:
            break
        second = sample_response(rng, lexicon, config)
    else:  # pragma: no cover - needs a degenerate lexicon
        raise RuntimeError(f"could not sample two different responses for {prompt!r}")
    r_first = gold(prompt, first, lexicon.name)
    r_second = gold(prompt, second, lexicon.name)
    p_first = sigmoid((r_first - r_second) / config.temperature)
    if rng.random() < p_first:
        chosen, rejected, p_true, r_chosen, r_rejected = first, second, p_first, r_first, r_second
    else:
        chosen, rejected, p_true = second, first, 1 - p_first
        r_chosen, r_rejected = r_second, r_first
    meta = {"p_true": p_true, "gold_chosen": r_chosen, "gold_rejected": r_rejected, "index": index}
    return Preference(prompt, chosen, rejected, lexicon.name, source=SOURCE, meta=meta)


def _reference(pair: Preference) -> Completion:
    meta = {"gold": pair.meta["gold_chosen"], "index": pair.meta["index"]}
    return Completion(pair.prompt, pair.chosen, pair.domain, source=SOURCE, meta=meta)

"""The gold reward of the synthetic benchmark (SYNTHETIC.md "Gold reward", METHODS §5).

    r*(x, y) = κ · [ Σ_{w∈y} s(w) + Σ_{w∈y} δ_d(w) ] + λ_d · clip((|y| − c) / h, −1, 1)

with ``s`` the shared lexicon, ``δ_d`` the drift of the prompt's domain ``d``, ``|y|`` the number
of words of the response, ``κ`` the word scale (so typical reward gaps are O(1)), ``λ_d`` the
domain's length preference, centre ``c`` = 24 words and half-range ``h`` = 16 words (the natural
responses have 8–40 words, so the term spans [−1, 1] there and is clipped outside).

It scores arbitrary text: the response is lower-cased and split into ``[a-z]+`` words; every word
outside the two lexicons scores 0. It plays the role the held-out RoBERTa judge plays in
[OODPL] §3.7 (scoring policy generations), with the difference that it is exact.
Sums over word *counts*, so repeating a sentiment word repeats its weight (no saturation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from .lexicon import SHARED_SENTIMENT, DomainLexicon, lexicon_for

_WORDS = re.compile(r"[a-z]+")

#: ``κ``: scales the summed word weights so pairwise gold gaps have a standard deviation near 1.
DEFAULT_WORD_SCALE = 0.5
LENGTH_CENTER_WORDS = 24.0
LENGTH_HALF_RANGE_WORDS = 16.0


def words(text: str) -> list[str]:
    """The words the gold reward sees: lower-cased ``[a-z]+`` runs (punctuation and digits drop)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _WORDS.findall(text.lower())


@dataclass(frozen=True)
class RewardBreakdown:
    """The parts of ``r*``: shared = κΣs(w), drift = κΣδ_d(w), length = λ_d·clip(...)."""

    shared: float
    drift: float
    length: float
    domain: str

    @property
    def total(self) -> float:
        return self.shared + self.drift + self.length


class GoldReward:
    """Exact reward ``r*(x, y)`` of the synthetic benchmark (see the module docstring).

    ``domains`` are the domains it can infer from a prompt; a domain passed explicitly may be any
    name (:func:`~oodpl.data.synthetic.lexicon.lexicon_for` builds its lexicon).
    """

    def __init__(
        self,
        domains: Sequence[str],
        length_preference: Mapping[str, float] | None = None,
        *,
        word_scale: float = DEFAULT_WORD_SCALE,
        length_center: float = LENGTH_CENTER_WORDS,
        length_half_range: float = LENGTH_HALF_RANGE_WORDS,
    ) -> None:
        if isinstance(domains, str) or not domains:
            raise ValueError("GoldReward domains must be a non-empty sequence of names")
        for name, value in (
            ("word_scale", word_scale),
            ("length_center", length_center),
            ("length_half_range", length_half_range),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"GoldReward {name} must be a finite number, got {value!r}")
        if word_scale <= 0 or length_half_range <= 0:
            raise ValueError("GoldReward word_scale and length_half_range must be positive")
        if len(set(domains)) != len(domains):
            raise ValueError(f"GoldReward domains repeat a name: {list(domains)}")
        self._domains = tuple(domains)
        self._lexicons: dict[str, DomainLexicon] = {name: lexicon_for(name) for name in domains}
        prefs = dict(length_preference or {})
        for name, value in prefs.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"GoldReward length_preference[{name!r}] must be finite")
        self._length_preference = MappingProxyType(prefs)
        self.word_scale = float(word_scale)
        self.length_center = float(length_center)
        self.length_half_range = float(length_half_range)

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains :meth:`domain_of` chooses among."""
        return self._domains

    @property
    def length_preference(self) -> Mapping[str, float]:
        return self._length_preference

    def lexicon(self, domain: str) -> DomainLexicon:
        if domain not in self._lexicons:
            self._lexicons[domain] = lexicon_for(domain)
        return self._lexicons[domain]

    def domain_of(self, prompt: str) -> str:
        """The domain whose product phrase the prompt names (longest match wins).

        Raises ValueError when no domain, or more than one equally long one, matches.
        """
        text = " " + " ".join(words(prompt)) + " "
        best: list[tuple[int, str]] = []
        for name in self.domains:
            for product in self._lexicons[name].products:
                if f" {product} " in text:
                    best.append((len(product), name))
        if not best:
            raise ValueError(
                f"cannot infer the domain of prompt {prompt[:80]!r}: it names no product of "
                f"{', '.join(self.domains)}; pass domain="
            )
        longest = max(length for length, _ in best)
        names = sorted({name for length, name in best if length == longest})
        if len(names) > 1:
            raise ValueError(
                f"prompt {prompt[:80]!r} names products of several domains {names}; pass domain="
            )
        return names[0]

    def length_term(self, n_words: int) -> float:
        """``clip((n − c)/h, −1, 1)``."""
        return max(-1.0, min(1.0, (n_words - self.length_center) / self.length_half_range))

    def breakdown(self, prompt: str, response: str, domain: str | None = None) -> RewardBreakdown:
        """The three parts of ``r*(prompt, response)`` in ``domain`` (inferred when None)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if domain is None:
            domain = self.domain_of(prompt)
        elif not isinstance(domain, str):
            raise TypeError(f"domain must be a str or None, got {type(domain).__name__}")
        drift_weights = self.lexicon(domain).drift
        tokens = words(response)
        shared = sum(SHARED_SENTIMENT.get(word, 0.0) for word in tokens)
        drift = sum(drift_weights.get(word, 0.0) for word in tokens)
        length = self._length_preference.get(domain, 0.0) * self.length_term(len(tokens))
        return RewardBreakdown(
            shared=self.word_scale * shared,
            drift=self.word_scale * drift,
            length=length,
            domain=domain,
        )

    def __call__(self, prompt: str, response: str, domain: str | None = None) -> float:
        return self.breakdown(prompt, response, domain).total

    def score_many(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        domains: Sequence[str | None] | None = None,
    ) -> list[float]:
        """``r*`` of each ``(prompt, response[, domain])``; the sequences must have equal length."""
        if len(prompts) != len(responses):
            raise ValueError(
                f"prompts and responses differ in length ({len(prompts)} vs {len(responses)})"
            )
        if domains is not None and len(domains) != len(prompts):
            raise ValueError(f"domains has {len(domains)} entries for {len(prompts)} prompts")
        doms: Iterable[str | None] = domains if domains is not None else [None] * len(prompts)
        return [self(p, r, d) for p, r, d in zip(prompts, responses, doms, strict=True)]

    def preference_probability(
        self,
        prompt: str,
        first: str,
        second: str,
        domain: str | None = None,
        temperature: float = 1.0,
    ) -> float:
        """Bradley–Terry ``P(first ≻ second) = σ((r*(first) − r*(second)) / T)``."""
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        if domain is None:
            domain = self.domain_of(prompt)
        gap = self(prompt, first, domain) - self(prompt, second, domain)
        return sigmoid(gap / temperature)

    def __repr__(self) -> str:
        return (
            f"GoldReward(domains={list(self.domains)}, length_preference="
            f"{dict(self._length_preference)}, word_scale={self.word_scale})"
        )


def sigmoid(value: float) -> float:
    """Numerically stable logistic function."""
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp_value = math.exp(value)
    return exp_value / (1.0 + exp_value)

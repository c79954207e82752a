"""Replies of the offline judge server, computed with the synthetic gold reward.

The server recognises the two packaged prompt formats by their tags
(``<question>``/``<answer_1>``/``<answer_2>`` for judging, ``<review>``/``<sentiment>``/
``<domain>`` for pair generation) and answers in the formats
:mod:`oodpl.data.labelling.parsing` expects, so a win rate measured through it is the gold-reward
win rate:

- judge: answer ``v = argmax_i r*(question, answer_i)`` in the domain named by the question
  (:meth:`GoldReward.domain_of`); on a gold tie the first *position* wins, so position swapping
  turns it into a tie. With ``verdict_temperature`` T > 0 the verdict is sampled instead:
  ``P(1) = σ((r*_1 − r*_2)/T)``, from a generator seeded by the request text (same request, same
  reply). A question with no recognisable domain gets a reply without a verdict (unparseable).
- pairs: prefix = the words up to the first "and" among the first 12 (the end of a synthetic
  prompt), else the first ``prefix_words`` words; review 1 = the review; review 2 = the review
  with its positive sentiment words (shared or the domain's) swapped for negative ones when the
  sentiment is positive, or the reverse when negative (a clause is appended when there is
  nothing to swap); "MORE POSITIVE" is whichever has the higher gold reward.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence

from oodpl.data.synthetic.gold import GoldReward, sigmoid, words
from oodpl.data.synthetic.lexicon import SHARED_SENTIMENT

_SHARED_POSITIVE = tuple(w for w, v in SHARED_SENTIMENT.items() if v > 0)
_SHARED_NEGATIVE = tuple(w for w, v in SHARED_SENTIMENT.items() if v < 0)


def _tag(name: str, text: str) -> str | None:
    match = re.search(rf"<{name}>\s*(.*?)\s*</{name}>", text, re.DOTALL)
    return match.group(1) if match else None


class GoldResponder:
    """``reply(messages) -> str`` for the loopback server (see the module docstring)."""

    def __init__(
        self, gold: GoldReward, *, verdict_temperature: float = 0.0, prefix_words: int = 6
    ) -> None:
        if not isinstance(verdict_temperature, (int, float)) or verdict_temperature < 0:
            raise ValueError(f"verdict_temperature must be >= 0, got {verdict_temperature!r}")
        if not isinstance(prefix_words, int) or prefix_words < 1:
            raise ValueError(f"prefix_words must be a positive int, got {prefix_words!r}")
        self.gold = gold
        self.verdict_temperature = float(verdict_temperature)
        self.prefix_words = prefix_words

    def reply(self, messages: Sequence[Mapping[str, object]]) -> str:
        text = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, Mapping))
        question, first, second = (_tag(n, text) for n in ("question", "answer_1", "answer_2"))
        if question is not None and first is not None and second is not None:
            return self.judge(question, first, second, seed_text=text)
        review, sentiment, domain = (_tag(n, text) for n in ("review", "sentiment", "domain"))
        if review is not None and sentiment is not None and domain is not None:
            return self.pair(domain, sentiment, review)
        return "This request has neither answers to compare nor a review to rewrite.\nNo verdict."

    def judge(self, question: str, first: str, second: str, *, seed_text: str = "") -> str:
        try:
            domain = self.gold.domain_of(question)
        except ValueError:
            return "I cannot judge this question: it belongs to no known domain.\nNo verdict."
        r_first = self.gold(question, first, domain)
        r_second = self.gold(question, second, domain)
        if self.verdict_temperature > 0:
            seed = int.from_bytes(hashlib.sha256(seed_text.encode()).digest()[:8], "big")
            p_first = sigmoid((r_first - r_second) / self.verdict_temperature)
            verdict = 1 if random.Random(seed).random() < p_first else 2
        else:
            verdict = 1 if r_first >= r_second else 2
        if r_first == r_second:
            comparison = "The two answers are equally good; I pick by position."
        else:
            comparison = f"Answer {verdict} is the better of the two."
        explanation = f"Gold reward: answer 1 {r_first:.4f}, answer 2 {r_second:.4f}."
        return f"{comparison}\n{explanation}\n{verdict}"

    def pair(self, domain: str, sentiment: str, review: str) -> str:
        tokens = review.split()
        if sentiment not in ("positive", "negative") or len(tokens) <= self.prefix_words:
            return "I cannot rewrite this review."
        try:
            drift = self.gold.lexicon(domain).drift
        except ValueError:
            return f"I do not know the domain {domain!r}."
        cut = self.prefix_words
        if "and" in tokens[:12] and tokens.index("and") + 1 < len(tokens) - 2:
            cut = tokens.index("and") + 1  # "i read this novel last week and" | "the plot ..."
        prefix = " ".join(tokens[:cut])
        rest = tokens[cut:]
        make_less_positive = sentiment == "positive"
        replacements = _SHARED_NEGATIVE if make_less_positive else _SHARED_POSITIVE
        changed, swapped = [], 0
        for token in rest:
            bare = words(token)
            weight = 0.0
            if len(bare) == 1:
                weight = SHARED_SENTIMENT.get(bare[0], 0.0) + drift.get(bare[0], 0.0)
            if (weight > 0) if make_less_positive else (weight < 0):
                changed.append(replacements[swapped % len(replacements)])
                swapped += 1
            else:
                changed.append(token)
        if not swapped:
            noun = self.gold.lexicon(domain).nouns[0]
            changed += ["but", "the", noun, "was", "poor" if make_less_positive else "decent"]
        original, rewritten = " ".join(rest), " ".join(changed)
        r_original = self.gold(prefix, original, domain)
        r_rewritten = self.gold(prefix, rewritten, domain)
        more_positive = 1 if r_original >= r_rewritten else 2
        return (
            f"PREFIX: {prefix}\n"
            f"REVIEW 1: {prefix} {original}\n"
            f"REVIEW 2: {prefix} {rewritten}\n"
            f"MORE POSITIVE: {more_positive}"
        )

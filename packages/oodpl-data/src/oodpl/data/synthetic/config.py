"""Configuration of the synthetic benchmark (SYNTHETIC.md "Records produced per domain")."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .gold import DEFAULT_WORD_SCALE, GoldReward
from .lexicon import lexicon_for

DEFAULT_DOMAINS: tuple[str, ...] = ("books", "dvd", "electronics", "kitchen")

#: ``λ_d``: some domains prefer longer answers, some shorter (the conflict that makes plain
#: multi-source mixing over-confident, METHODS §5). Domains not listed get 0.
DEFAULT_LENGTH_PREFERENCE: Mapping[str, float] = {
    "books": 0.6,
    "dvd": 0.0,
    "electronics": -0.6,
    "kitchen": 0.3,
    "music": 0.3,
    "toys": -0.3,
}

_SIZE_FIELDS = ("n_finetune", "n_pref_train", "n_eval_reference", "n_eval_pref")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes (per domain), label temperature, seed and text-shape knobs of the benchmark.

    Defaults are the paper's Tab. 4 sizes (1,000 / 500 / 500 / 500) halved. ``temperature`` is the
    ``T`` of the Bradley–Terry labels ``P(y_1 ≻ y_2) = σ((r*(y_1) − r*(y_2))/T)``: small T gives
    nearly noiseless labels, large T noisy ones (the default 0.5 makes the gold reward agree
    with about 83% of the sampled labels; T = 1 with about 74%). ``length_preference`` maps
    domain → ``λ_d`` (None: :data:`DEFAULT_LENGTH_PREFERENCE`); it is kept as a dict and
    hashed as sorted ``(domain, λ)`` pairs. ``eval_prompt_fraction`` of each domain's prompts is
    reserved for the eval splits, so eval prompts never occur in training splits.
    """

    domains: tuple[str, ...] = DEFAULT_DOMAINS
    n_finetune: int = 500
    n_pref_train: int = 250
    n_eval_reference: int = 250
    n_eval_pref: int = 250
    temperature: float = 0.5
    seed: int = 0
    length_preference: Any = None
    eval_prompt_fraction: float = 0.25
    min_words: int = 8
    max_words: int = 40
    sentiment_rate: float = 0.85
    drift_share: float = 0.5
    word_scale: float = DEFAULT_WORD_SCALE
    _length_pairs: tuple[tuple[str, float], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        domains = self.domains
        if isinstance(domains, str) or not isinstance(domains, (tuple, list)) or not domains:
            raise ValueError(
                f"SyntheticConfig.domains must be a non-empty sequence, got {domains!r}"
            )
        domains = tuple(domains)
        if len(set(domains)) != len(domains):
            raise ValueError(f"SyntheticConfig.domains repeats a name: {list(domains)}")
        for name in domains:
            lexicon_for(name)  # raises ValueError naming a bad domain name
        object.__setattr__(self, "domains", domains)
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"SyntheticConfig.{name} must be a non-negative int, got {value!r}"
                )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"SyntheticConfig.seed must be an int, got {self.seed!r}")
        _require_open_unit("temperature", self.temperature, upper=math.inf)
        _require_open_unit("eval_prompt_fraction", self.eval_prompt_fraction)
        _require_open_unit("word_scale", self.word_scale, upper=math.inf)
        for name in ("sentiment_rate", "drift_share"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"SyntheticConfig.{name} must lie in [0, 1], got {value!r}")
        if not isinstance(self.min_words, int) or not isinstance(self.max_words, int):
            raise TypeError("SyntheticConfig.min_words and max_words must be ints")
        if not 4 <= self.min_words <= self.max_words - 8:
            raise ValueError(
                f"SyntheticConfig needs 4 <= min_words <= max_words - 8, got min_words="
                f"{self.min_words}, max_words={self.max_words}"
            )
        object.__setattr__(self, "_length_pairs", _length_pairs(self.length_preference))
        object.__setattr__(self, "length_preference", dict(self._length_pairs))

    def __hash__(self) -> int:
        return hash(
            tuple(
                self._length_pairs if item.name == "length_preference" else getattr(self, item.name)
                for item in fields(self)
                if item.compare
            )
        )

    def lambda_for(self, domain: str) -> float:
        """``λ_d`` of ``domain`` (0 when unlisted)."""
        return float(self.length_preference.get(domain, 0.0))

    def gold_reward(self) -> GoldReward:
        """The :class:`GoldReward` of this configuration (no data is generated)."""
        return GoldReward(
            self.domains,
            {name: self.lambda_for(name) for name in self.domains},
            word_scale=self.word_scale,
            length_center=(self.min_words + self.max_words) / 2,
            length_half_range=(self.max_words - self.min_words) / 2,
        )


def _require_open_unit(name: str, value: object, upper: float = 1.0) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"SyntheticConfig.{name} must be a number, got {value!r}")
    if not (0.0 < value < upper) or not math.isfinite(value):
        bound = "(0, 1)" if upper == 1.0 else "a positive finite number"
        raise ValueError(f"SyntheticConfig.{name} must be {bound}, got {value!r}")


def _length_pairs(value: object) -> tuple[tuple[str, float], ...]:
    if value is None:
        return tuple(sorted(DEFAULT_LENGTH_PREFERENCE.items()))
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = [tuple(item) for item in value]
    else:
        raise TypeError(
            f"SyntheticConfig.length_preference must be a mapping domain -> float, got {value!r}"
        )
    pairs = []
    for item in items:
        if len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"SyntheticConfig.length_preference entry {item!r} is not (domain, λ)")
        name, lam = item
        if not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise ValueError(f"SyntheticConfig.length_preference[{name!r}] must be finite")
        pairs.append((name, float(lam)))
    return tuple(sorted(pairs))

"""Word lists of the synthetic multi-domain benchmark (SYNTHETIC.md "Shape").

Every domain owns a :class:`DomainLexicon`: prompt words (openers and products, the prompt shift),
aspect nouns, and its own sentiment words ``δ_d`` (the drift). All domains share the neutral
filler and the **shared** sentiment lexicon ``s`` (same polarity everywhere). Some drift words
flip polarity across domains on purpose ("light" is good for electronics and bad for a book,
"heavy" good for a skillet and bad for a laptop), so a reward fitted on other domains is
actively wrong on them, not just uninformed.

Four domains are built in (the CSG domains books, dvd, electronics, kitchen) plus two extras
(music, toys). Any other domain name gets a *derived* lexicon, deterministic in the name: nouns
and drift polarities drawn from generic pools by a generator seeded with a SHA-256 of the name,
so "any count" of domains works while the whole vocabulary stays a few hundred words.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

#: Shared sentiment lexicon ``s(w)``: the same weight in every domain.
SHARED_SENTIMENT: Mapping[str, float] = MappingProxyType(
    {
        "excellent": 1.0,
        "wonderful": 1.0,
        "fantastic": 1.0,
        "superb": 0.9,
        "great": 0.8,
        "impressive": 0.8,
        "lovely": 0.7,
        "good": 0.6,
        "solid": 0.5,
        "pleasant": 0.5,
        "nice": 0.4,
        "decent": 0.3,
        "terrible": -1.0,
        "awful": -1.0,
        "horrible": -0.9,
        "useless": -0.9,
        "poor": -0.8,
        "disappointing": -0.8,
        "bad": -0.7,
        "frustrating": -0.7,
        "annoying": -0.6,
        "weak": -0.5,
        "mediocre": -0.4,
        "bland": -0.3,
    }
)

#: Adjectives with no sentiment in any domain (weight 0 everywhere).
NEUTRAL_ADJECTIVES: tuple[str, ...] = (
    "new",
    "plain",
    "standard",
    "typical",
    "different",
    "small",
    "large",
    "usual",
    "ordinary",
    "familiar",
)

#: Words that never carry weight: intensifiers and connectors used by the clause templates.
INTENSIFIERS: tuple[str, ...] = ("very", "really", "quite", "rather", "fairly")
CONNECTORS: tuple[str, ...] = ("and", "but", "while", "although", "also", "plus")

#: Time phrases shared by every domain's prompts.
TIME_PHRASES: tuple[str, ...] = (
    "last week",
    "over the weekend",
    "last month",
    "on a rainy day",
    "after a friend recommended it",
    "on holiday",
    "yesterday",
    "for my family",
    "as a gift",
    "during a trip",
)

_WORD = re.compile(r"^[a-z]+$")
_PHRASE = re.compile(r"^[a-z]+( [a-z]+)*$")


@dataclass(frozen=True)
class DomainLexicon:
    """The vocabulary of one domain.

    ``openers`` and ``products`` build prompts ("i read this thriller last week and");
    ``nouns`` are the aspects the responses talk about; ``drift`` is ``δ_d(w)``, the domain's own
    sentiment weights (SYNTHETIC.md, "Gold reward").
    """

    name: str
    openers: tuple[str, ...]
    products: tuple[str, ...]
    nouns: tuple[str, ...]
    drift: Mapping[str, float]

    def __post_init__(self) -> None:
        if not self.openers or not self.products or not self.nouns or not self.drift:
            raise ValueError(
                f"DomainLexicon {self.name!r}: openers, products, nouns and drift must be non-empty"
            )
        for field_name in ("openers", "products", "nouns", "drift"):
            pattern = _WORD if field_name in ("nouns", "drift") else _PHRASE
            for word in getattr(self, field_name):
                if not pattern.match(word):
                    raise ValueError(
                        f"DomainLexicon {self.name!r}.{field_name}: {word!r} is not lowercase ascii"
                    )
        object.__setattr__(self, "drift", MappingProxyType(dict(self.drift)))

    @property
    def positive_words(self) -> tuple[str, ...]:
        return tuple(w for w, v in self.drift.items() if v > 0)

    @property
    def negative_words(self) -> tuple[str, ...]:
        return tuple(w for w, v in self.drift.items() if v < 0)


BUILTIN_LEXICONS: Mapping[str, DomainLexicon] = MappingProxyType(
    {
        "books": DomainLexicon(
            name="books",
            openers=("i read", "i finished", "i borrowed"),
            products=("novel", "memoir", "thriller", "biography", "anthology", "mystery"),
            nouns=("plot", "characters", "prose", "ending", "chapters", "author", "dialogue"),
            drift={
                "gripping": 1.0,
                "insightful": 0.8,
                "moving": 0.8,
                "vivid": 0.7,
                "witty": 0.6,
                "long": 0.4,  # flips: bad for a dvd
                "tedious": -0.9,
                "predictable": -0.8,
                "shallow": -0.7,
                "dull": -0.7,
                "light": -0.6,  # flips: good for electronics
                "wordy": -0.6,
            },
        ),
        "dvd": DomainLexicon(
            name="dvd",
            openers=("we watched", "i rented", "i streamed"),
            products=("documentary", "comedy", "drama", "western", "musical", "series"),
            nouns=("film", "picture", "soundtrack", "acting", "extras", "scenes", "director"),
            drift={
                "hilarious": 0.9,
                "cinematic": 0.8,
                "crisp": 0.7,
                "haunting": 0.7,
                "sharp": 0.5,
                "grainy": -0.9,
                "choppy": -0.8,
                "muffled": -0.8,
                "long": -0.6,  # flips: good for a book
                "dated": -0.6,
                "quiet": -0.5,  # flips: good for electronics
                "cheesy": -0.5,
            },
        ),
        "electronics": DomainLexicon(
            name="electronics",
            openers=("i bought", "i set up", "i ordered"),
            products=("tablet", "headphones", "router", "camera", "phone", "laptop"),
            nouns=("battery", "screen", "charger", "speaker", "buttons", "signal", "display"),
            drift={
                "fast": 0.9,
                "responsive": 0.8,
                "durable": 0.8,
                "light": 0.7,  # flips: bad for a book
                "quiet": 0.6,  # flips: bad for a dvd
                "bright": 0.6,
                "laggy": -0.9,
                "buggy": -0.9,
                "flimsy": -0.8,
                "hot": -0.7,  # flips: good for a kettle
                "heavy": -0.6,  # flips: good for a skillet
                "glitchy": -0.6,
            },
        ),
        "kitchen": DomainLexicon(
            name="kitchen",
            openers=("i used", "we bought", "i cooked with"),
            products=("skillet", "toaster", "mixer", "saucepan", "cutlery", "grill"),
            nouns=("pan", "handle", "lid", "blade", "kettle", "knife", "base"),
            drift={
                "sturdy": 0.9,
                "nonstick": 0.8,
                "sharp": 0.7,
                "heavy": 0.5,  # flips: bad for a laptop
                "hot": 0.5,  # flips: bad for a phone
                "roomy": 0.5,
                "rusty": -0.9,
                "leaky": -0.8,
                "sticky": -0.8,
                "dull": -0.7,
                "wobbly": -0.7,
                "greasy": -0.6,
            },
        ),
        "music": DomainLexicon(
            name="music",
            openers=("i listened to", "we played", "i heard"),
            products=("album", "single", "record", "playlist", "concert", "soundtrack"),
            nouns=("vocals", "melody", "lyrics", "chorus", "drums", "mix", "band"),
            drift={
                "catchy": 0.9,
                "soulful": 0.8,
                "lush": 0.7,
                "loud": 0.5,  # flips: bad for toys
                "haunting": 0.5,
                "tight": 0.5,
                "repetitive": -0.8,
                "flat": -0.8,
                "muddy": -0.7,
                "shrill": -0.7,
                "quiet": -0.5,
                "cheesy": -0.6,
            },
        ),
        "toys": DomainLexicon(
            name="toys",
            openers=("my kids tried", "we gave", "i assembled"),
            products=("puzzle", "doll", "boardgame", "robot", "kite", "playset"),
            nouns=("pieces", "colors", "instructions", "box", "wheels", "parts", "design"),
            drift={
                "sturdy": 0.8,
                "educational": 0.8,
                "colorful": 0.7,
                "safe": 0.7,
                "quiet": 0.5,
                "chunky": 0.4,
                "loud": -0.7,  # flips: good for music
                "fragile": -0.9,
                "sharp": -0.8,  # flips: good for a knife
                "tiny": -0.6,
                "confusing": -0.6,
                "flimsy": -0.8,
            },
        ),
    }
)

#: Pools for derived domains (names that are not built in).
_DERIVED_NOUNS: tuple[str, ...] = (
    "material",
    "finish",
    "size",
    "weight",
    "packaging",
    "price",
    "quality",
    "look",
    "feel",
    "setup",
    "support",
    "value",
)
_DERIVED_DRIFT_WORDS: tuple[str, ...] = (
    "smooth",
    "soft",
    "warm",
    "bold",
    "fresh",
    "compact",
    "slim",
    "rough",
    "stiff",
    "noisy",
    "bulky",
    "shiny",
    "tangy",
    "crunchy",
    "loose",
    "tight",
)
_DERIVED_PRODUCT_SUFFIXES: tuple[str, ...] = ("set", "kit", "pack", "model", "edition", "bundle")


def derived_lexicon(name: str) -> DomainLexicon:
    """A deterministic lexicon for a domain name that is not built in.

    The prompt names the domain itself ("i tried this garden kit last week and"), so the domain
    of a derived prompt is always recoverable. Nouns and the signs and sizes of 10 drift words come
    from a ``random.Random`` seeded with the SHA-256 of the name: the same name gives the same
    lexicon on every machine and in every process.
    """
    if not isinstance(name, str) or not _WORD.match(name):
        raise ValueError(
            f"domain name {name!r} is not built in ({', '.join(BUILTIN_LEXICONS)}) and a derived "
            "domain needs a lowercase ascii word (letters only)"
        )
    digest = hashlib.sha256(f"oodpl-synthetic-domain:{name}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    nouns = tuple(rng.sample(_DERIVED_NOUNS, 7))
    drift_words = rng.sample(_DERIVED_DRIFT_WORDS, 10)
    drift = {}
    for index, word in enumerate(drift_words):
        sign = 1.0 if index < 5 else -1.0
        drift[word] = sign * round(rng.uniform(0.5, 1.0), 1)
    return DomainLexicon(
        name=name,
        openers=("i tried", "we got", "i tested"),
        products=tuple(f"{name} {suffix}" for suffix in _DERIVED_PRODUCT_SUFFIXES),
        nouns=nouns,
        drift=drift,
    )


def lexicon_for(name: str) -> DomainLexicon:
    """The built-in lexicon of ``name`` or, for any other name, :func:`derived_lexicon`."""
    builtin = BUILTIN_LEXICONS.get(name)
    return builtin if builtin is not None else derived_lexicon(name)

"""Out-of-distribution split protocols: folds over domains, splits by prompt, all seeded.

A :class:`Fold` names the training domains and the held-out test domains (optionally grouped
into named test sets, and optionally with an in-distribution test share of the training
domains); :func:`apply_fold` turns records into a :class:`FoldSplit`. Everything is split by
PROMPT: records are grouped by :func:`prompt_key` (the prompt with whitespace runs collapsed),
a group never straddles train and test, and a training record whose prompt also occurs in any
test set of the fold is removed from training (counted in ``FoldSplit.n_overlap_dropped``).

Protocols:

- :func:`leave_one_domain_out`: one fold per domain (METHODS §3; sentiment domains
  book, dvd, electronics, kitchen);
- :func:`shp_group_folds`: SHP's 18 subreddits in six groups of three, one group held out per
  fold (METHODS §3);
- :func:`dporm_settings`: settings I(a)–I(c) and II(a)–II(b) of the EXRM-vs-DPORM study
  (METHODS §4);
- :func:`split_domain` / :func:`per_domain_splits`: per-domain fine-tuning /
  preference-training / eval-reference / eval-preference parts, sized like METHODS §3 (1,000 /
  500 / 500 / 500 by default).

Determinism: prompt groups are sorted by key before a ``random.Random`` seeded from
``(seed, fold or domain name)`` shuffles them, so which records land in which part depends on
the seed and the set of records, not on their input order (within a part, records keep their
input order; :func:`split_domain` sorts each prompt group's pairs, so its output is fully
order-independent).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from oodpl.core.records import Completion, Preference
from oodpl.data.sources.amazon import AMAZON_DOMAINS
from oodpl.data.sources.chatbot_arena import ARENA_DOMAINS
from oodpl.data.sources.hh_rlhf import HH_DOMAINS
from oodpl.data.sources.nectar import NECTAR_DOMAINS
from oodpl.data.sources.shp import SHP_DOMAINS
from oodpl.data.sources.summarize import SUMMARIZE_DOMAINS
from oodpl.data.sources.webgpt import WEBGPT_DOMAINS

Record = Preference | Completion

#: METHODS §3: SHP's 18 subreddits in six groups of three.
SHP_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("askacademia", "askanthropology", "askbaking"),
    ("askcarguys", "askculinary", "askdocs"),
    ("askengineers", "askhistorians", "askhr"),
    ("askphilosophy", "askphysics", "askscience"),
    ("asksciencefiction", "asksocialscience", "askvet"),
    ("changemyview", "explainlikeimfive", "legaladvice"),
)

#: METHODS §4: the datasets of the DPORM study, each a set of our domain names.
DPORM_DATASETS: dict[str, tuple[str, ...]] = {
    "ultrafeedback": ("ultrafeedback",),
    "chatbot_arena": ARENA_DOMAINS,
    "hh-rlhf": HH_DOMAINS,
    "nectar": NECTAR_DOMAINS,
    "webgpt": WEBGPT_DOMAINS,
    "summarize": SUMMARIZE_DOMAINS,
}


def prompt_key(prompt: str) -> str:
    """The grouping key of a prompt: its text with every whitespace run collapsed to one space."""
    return " ".join(prompt.split())


@dataclass(frozen=True)
class Fold:
    """Train on ``train_domains``, test on ``test_domains``.

    ``test_groups``: named test sets ``((name, domains), ...)`` partitioning ``test_domains``
    (default: one set called ``"test"``). ``id_test_fraction``: share of the training domains'
    prompt groups held out as an in-distribution test set (``FoldSplit.id_test``).
    """

    name: str
    train_domains: tuple[str, ...]
    test_domains: tuple[str, ...]
    test_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    id_test_fraction: float = 0.0
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name: a fold needs a non-empty name")
        object.__setattr__(self, "train_domains", tuple(self.train_domains))
        object.__setattr__(self, "test_domains", tuple(self.test_domains))
        if not self.train_domains:
            raise ValueError(f"train_domains: fold {self.name!r} has no training domain")
        if not self.test_domains and self.id_test_fraction == 0:
            raise ValueError(f"test_domains: fold {self.name!r} has nothing to test on")
        shared = sorted(set(self.train_domains) & set(self.test_domains))
        if shared:
            raise ValueError(f"test_domains: {shared} are also training domains of {self.name!r}")
        groups = tuple((g, tuple(ds)) for g, ds in self.test_groups) or (
            (("test", self.test_domains),) if self.test_domains else ()
        )
        object.__setattr__(self, "test_groups", groups)
        grouped = [d for _, ds in groups for d in ds]
        if sorted(grouped) != sorted(self.test_domains):
            raise ValueError(
                f"test_groups: must partition test_domains {list(self.test_domains)}, got {grouped}"
            )
        if not 0.0 <= self.id_test_fraction < 1.0:
            raise ValueError(f"id_test_fraction: expected 0 <= f < 1, got {self.id_test_fraction}")

    @property
    def domains(self) -> tuple[str, ...]:
        return self.train_domains + self.test_domains


@dataclass(frozen=True)
class FoldSplit:
    """A fold applied to records: ``train``, named ``test`` sets and ``id_test``.

    ``n_overlap_dropped``: training records removed because their prompt is in a test set;
    ``n_unused``: records of domains outside the fold; ``empty_domains``: fold domains that had
    no records at all.
    """

    fold: Fold
    train: list[Record]
    test: dict[str, list[Record]]
    id_test: list[Record] = field(default_factory=list)
    n_overlap_dropped: int = 0
    n_unused: int = 0
    empty_domains: tuple[str, ...] = ()

    @property
    def all_test(self) -> list[Record]:
        """Every held-out record: the test sets then the in-distribution test set."""
        return [r for group in self.test.values() for r in group] + list(self.id_test)


def _rng(seed: int, name: str) -> random.Random:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    return random.Random(f"{seed}/{name}")


def group_by_prompt(records: Iterable[Record]) -> dict[str, list[Record]]:
    """``{prompt_key: [records ...]}`` with keys in sorted order."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(prompt_key(r.prompt), []).append(r)
    return {k: groups[k] for k in sorted(groups)}


def _shuffled_keys(groups: Mapping[str, list[Record]], rng: random.Random) -> list[str]:
    keys = sorted(groups)
    rng.shuffle(keys)
    return keys


def train_test_split_by_prompt(
    records: Iterable[Record], test_fraction: float, *, seed: int = 0, name: str = "split"
) -> tuple[list[Record], list[Record]]:
    """Split records so that ``round(test_fraction * n_groups)`` prompt groups go to test.

    With at least two groups and ``0 < test_fraction < 1`` both sides get at least one group.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction: expected 0 <= f <= 1, got {test_fraction}")
    groups = group_by_prompt(records)
    keys = _shuffled_keys(groups, _rng(seed, name))
    n_test = round(test_fraction * len(keys))
    if 0 < test_fraction < 1 and len(keys) >= 2:
        n_test = min(max(n_test, 1), len(keys) - 1)
    test_keys = set(keys[:n_test])
    train = [r for k in sorted(groups) if k not in test_keys for r in groups[k]]
    test = [r for k in sorted(groups) if k in test_keys for r in groups[k]]
    return train, test


def apply_fold(fold: Fold, records: Iterable[Record], *, seed: int = 0) -> FoldSplit:
    """Split ``records`` by ``fold`` (by prompt; see the module docstring)."""
    if not isinstance(fold, Fold):
        raise TypeError(f"fold: expected a Fold, got {type(fold).__name__}")
    records = list(records)
    in_train = set(fold.train_domains)
    group_of = {d: g for g, ds in fold.test_groups for d in ds}
    train_pool: list[Record] = []
    test: dict[str, list[Record]] = {g: [] for g, _ in fold.test_groups}
    seen: set[str] = set()
    n_unused = 0
    for r in records:
        seen.add(r.domain)
        if r.domain in in_train:
            train_pool.append(r)
        elif r.domain in group_of:
            test[group_of[r.domain]].append(r)
        else:
            n_unused += 1
    id_test: list[Record] = []
    if fold.id_test_fraction > 0:
        train_pool, id_test = train_test_split_by_prompt(
            train_pool, fold.id_test_fraction, seed=seed, name=fold.name
        )
    held_out = {prompt_key(r.prompt) for group in test.values() for r in group}
    held_out |= {prompt_key(r.prompt) for r in id_test}
    train = [r for r in train_pool if prompt_key(r.prompt) not in held_out]
    return FoldSplit(
        fold=fold,
        train=train,
        test=test,
        id_test=id_test,
        n_overlap_dropped=len(train_pool) - len(train),
        n_unused=n_unused,
        empty_domains=tuple(d for d in fold.domains if d not in seen),
    )


def leave_one_domain_out(
    domains: Sequence[str] = AMAZON_DOMAINS, *, id_test_fraction: float = 0.0
) -> list[Fold]:
    """One fold per domain: train on all the others, test on it (METHODS §3)."""
    domains = tuple(domains)
    if len(domains) < 2 or len(set(domains)) != len(domains):
        raise ValueError(f"domains: need at least two distinct domains, got {list(domains)}")
    return [
        Fold(
            name=f"lodo-{held}",
            train_domains=tuple(d for d in domains if d != held),
            test_domains=(held,),
            id_test_fraction=id_test_fraction,
            description=f"leave one domain out: test on {held}",
        )
        for held in domains
    ]


def shp_group_folds(
    groups: Sequence[Sequence[str]] = SHP_GROUPS, *, id_test_fraction: float = 0.0
) -> list[Fold]:
    """Six folds over SHP: hold out one group of three subreddits, train on the other 15."""
    flat = [d for g in groups for d in g]
    if len(set(flat)) != len(flat):
        raise ValueError("groups: a subreddit appears in more than one group")
    unknown = sorted(set(flat) - set(SHP_DOMAINS))
    if unknown:
        raise ValueError(f"groups: unknown SHP subreddits {unknown}")
    return [
        Fold(
            name=f"shp-group{i + 1}",
            train_domains=tuple(d for d in flat if d not in group),
            test_domains=tuple(group),
            id_test_fraction=id_test_fraction,
            description="SHP six-groups-of-three: held out " + ", ".join(group),
        )
        for i, group in enumerate(groups)
    ]


def _cross_dataset(name: str, train: str, id_fraction: float, description: str) -> Fold:
    others = [(k, v) for k, v in DPORM_DATASETS.items() if k != train]
    return Fold(
        name=name,
        train_domains=DPORM_DATASETS[train],
        test_domains=tuple(d for _, ds in others for d in ds),
        test_groups=tuple(others),
        id_test_fraction=id_fraction,
        description=description,
    )


def dporm_settings(*, id_test_fraction: float = 0.1) -> dict[str, Fold]:
    """The five settings of the EXRM-vs-DPORM study (METHODS §4), keyed ``"I(a)"`` ... ``"II(b)"``.

    I(a)/I(b)/I(c): train on UltraFeedback / Chatbot Arena / HH-RLHF, test on each of the other
    five datasets (one named test set per dataset) plus an in-distribution share. II(a):
    response shift, UltraFeedback vs the ``ultrafeedback-regenerated`` domain (UltraFeedback
    prompts answered by other models; load it with ``domain="ultrafeedback-regenerated"``).
    II(b): prompt shift, Reddit TL;DR vs CNN and DailyMail (Summarize from Feedback).
    """
    f = id_test_fraction
    return {
        "I(a)": _cross_dataset("I(a)", "ultrafeedback", f, "train UltraFeedback; OOD: the rest"),
        "I(b)": _cross_dataset("I(b)", "chatbot_arena", f, "train Chatbot Arena; OOD: the rest"),
        "I(c)": _cross_dataset("I(c)", "hh-rlhf", f, "train HH-RLHF; OOD: the rest"),
        "II(a)": Fold(
            name="II(a)",
            train_domains=("ultrafeedback",),
            test_domains=("ultrafeedback-regenerated",),
            test_groups=(("response_shift", ("ultrafeedback-regenerated",)),),
            id_test_fraction=f,
            description="response shift: UltraFeedback vs responses regenerated by other models",
        ),
        "II(b)": Fold(
            name="II(b)",
            train_domains=("tldr",),
            test_domains=("cnn", "dailymail"),
            test_groups=(("cnn", ("cnn",)), ("dailymail", ("dailymail",))),
            id_test_fraction=f,
            description="prompt shift: Reddit TL;DR (ID) vs CNN and DailyMail",
        ),
    }


# -- per-domain parts (METHODS §3) ----------------------------------------------------------


@dataclass(frozen=True)
class DomainSplitSizes:
    """Target sizes of the four per-domain parts (METHODS §3 defaults)."""

    fine_tuning: int = 1000
    preference_train: int = 500
    eval_reference: int = 500
    eval_preference: int = 500

    def __post_init__(self) -> None:
        for name in ("fine_tuning", "preference_train", "eval_reference", "eval_preference"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")


PAPER_SPLIT_SIZES = DomainSplitSizes()


@dataclass(frozen=True)
class DomainSplit:
    """The four parts of one domain; no prompt is in both a training and an evaluation part.

    ``fine_tuning`` (completions, the support set F_i), ``preference_train`` (the query set
    P_i), ``eval_reference`` (one reference completion per prompt: the preferred answer, for
    win rates and gold-reward comparison), ``eval_preference`` (pairs for accuracy).
    ``shortfall`` maps a part to how many records it lacks against its target size.
    """

    domain: str
    fine_tuning: list[Completion]
    preference_train: list[Preference]
    eval_reference: list[Completion]
    eval_preference: list[Preference]
    shortfall: dict[str, int] = field(default_factory=dict)


def _take_groups(keys: list[str], groups: Mapping[str, list], size: int, per_group: int | None):
    """Consume whole groups from ``keys`` (in place) until ``size`` records are taken."""
    taken: list = []
    while keys and len(taken) < size:
        members = groups[keys.pop(0)]
        room = size - len(taken)
        taken.extend(members[: min(room, per_group or room)])
    return taken


def split_domain(
    preferences: Iterable[Preference],
    *,
    completions: Iterable[Completion] | None = None,
    sizes: DomainSplitSizes = PAPER_SPLIT_SIZES,
    seed: int = 0,
    strict: bool = False,
) -> DomainSplit:
    """Split one domain's records into the four METHODS §3 parts, by prompt.

    Prompt groups of ``preferences`` (shuffled by ``seed``) fill, in order, eval-preference,
    eval-reference (one completion ``(prompt, chosen)`` per group), preference-training, and,
    when ``completions`` is ``None``, fine-tuning (``(prompt, chosen)`` of the remaining pairs).
    Given ``completions``, fine-tuning takes those whose prompt is in no evaluation part. A
    group is never shared between parts; records beyond a part's size are not used.
    ``strict=True`` raises ``ValueError`` when a part falls short of its size.
    """
    prefs = [p for p in preferences]
    domains = {p.domain for p in prefs} | {c.domain for c in (completions or [])}
    if len(domains) != 1:
        raise ValueError(f"preferences: expected records of exactly one domain, got {domains}")
    domain = domains.pop()
    groups = group_by_prompt(prefs)
    for members in groups.values():
        members.sort(key=lambda p: (p.chosen, p.rejected))
    keys = _shuffled_keys(groups, _rng(seed, domain))
    eval_pref = _take_groups(keys, groups, sizes.eval_preference, None)
    eval_ref = [
        Completion(p.prompt, p.chosen, p.domain, p.source, {**p.meta, "rejected": p.rejected})
        for p in _take_groups(keys, groups, sizes.eval_reference, 1)
    ]
    pref_train = _take_groups(keys, groups, sizes.preference_train, None)
    eval_keys = {prompt_key(r.prompt) for r in eval_pref} | {prompt_key(r.prompt) for r in eval_ref}
    if completions is None:
        fine_tuning = [
            Completion(p.prompt, p.chosen, p.domain, p.source, dict(p.meta))
            for p in _take_groups(keys, groups, sizes.fine_tuning, None)
        ]
    else:
        pool = group_by_prompt(c for c in completions if prompt_key(c.prompt) not in eval_keys)
        for members in pool.values():
            members.sort(key=lambda c: c.response)
        pool_keys = _shuffled_keys(pool, _rng(seed, domain + "/fine_tuning"))
        fine_tuning = _take_groups(pool_keys, pool, sizes.fine_tuning, None)
    parts = {
        "fine_tuning": fine_tuning,
        "preference_train": pref_train,
        "eval_reference": eval_ref,
        "eval_preference": eval_pref,
    }
    shortfall = {
        k: getattr(sizes, k) - len(v) for k, v in parts.items() if len(v) < getattr(sizes, k)
    }
    if strict and shortfall:
        raise ValueError(f"preferences: domain {domain!r} is too small: short by {shortfall}")
    return DomainSplit(domain=domain, shortfall=shortfall, **parts)


def per_domain_splits(
    preferences: Iterable[Preference],
    *,
    completions: Iterable[Completion] | None = None,
    sizes: DomainSplitSizes = PAPER_SPLIT_SIZES,
    seed: int = 0,
    strict: bool = False,
) -> dict[str, DomainSplit]:
    """:func:`split_domain` for every domain of ``preferences`` (sorted by domain name)."""
    by_domain: dict[str, list[Preference]] = {}
    for p in preferences:
        by_domain.setdefault(p.domain, []).append(p)
    comps: dict[str, list[Completion]] = {}
    for c in completions or []:
        comps.setdefault(c.domain, []).append(c)
    extra = sorted(set(comps) - set(by_domain))
    if extra:
        raise ValueError(f"completions: domains {extra} have no preferences to split")
    return {
        d: split_domain(
            by_domain[d],
            completions=None if completions is None else comps.get(d, []),
            sizes=sizes,
            seed=seed,
            strict=strict,
        )
        for d in sorted(by_domain)
    }

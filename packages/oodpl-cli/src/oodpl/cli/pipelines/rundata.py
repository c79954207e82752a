"""The records of a run: :class:`RunData` per domain and part, from ``data.*`` of a run config.

``data.source: synthetic`` is the built-in benchmark (:mod:`oodpl.data.synthetic`, sizes from
``data.sizes``); any other name is loaded with :func:`oodpl.data.registry.load` from ``data.path``
and split per domain by prompt (:func:`oodpl.data.splits.per_domain_splits`). Training
(in-distribution) domains are ``data.domains`` minus ``data.held_out`` (:func:`split_domains`).
Re-exported by :mod:`oodpl.cli.pipelines.build`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oodpl.cli.config.schema import DataConfig, RunConfig
from oodpl.cli.errors import BadInputError, PathNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from oodpl.core.records import Completion, Preference
    from oodpl.data.synthetic import GoldReward

SYNTHETIC_SOURCE = "synthetic"
PARTS = ("fine_tuning", "preference_train", "eval_reference", "eval_preference")
_FOLD_PROTOCOLS = ("shp-group-folds", "dporm-settings")


# --------------------------------------------------------------------------------------- errors
@contextlib.contextmanager
def user_errors(what: str) -> Iterator[None]:
    """Re-raise the libraries' bad-input errors as :class:`BadInputError` ``"<what>: <message>"``.

    Covers oodpl.models' errors (unknown preset, bad checkpoint, tokenizer, records), oodpl.data's
    (format, unknown source / domain) and missing files; other exceptions pass unchanged.
    """
    from oodpl.data.errors import DataFormatError, UnknownDomainError, UnknownSourceError
    from oodpl.models.errors import OodplModelError

    known = (OodplModelError, DataFormatError, UnknownDomainError, UnknownSourceError)
    try:
        yield
    except BadInputError:
        raise
    except known as exc:
        raise BadInputError(f"{what}: {exc}") from exc
    except FileNotFoundError as exc:
        raise BadInputError(f"{what}: {exc}") from exc


# ----------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class RunData:
    """The records of a run, per part and domain.

    Attributes:
        train_domains: in-distribution domains (trained on), in config order.
        test_domains: held-out (out-of-distribution) domains, never trained on.
        fine_tuning: ``{domain: [Completion]}``, the support sets ``F_i`` (METHODS §3).
        preference_train: ``{domain: [Preference]}``, the query sets ``P_i``.
        eval_reference: ``{domain: [Completion]}``, evaluation prompts with a reference answer.
        eval_preference: ``{domain: [Preference]}``, evaluation pairs (accuracy, calibration).
        gold: the synthetic benchmark's exact reward, ``None`` for other sources.
        source: the data source name.
    """

    train_domains: tuple[str, ...]
    test_domains: tuple[str, ...]
    fine_tuning: dict[str, list[Completion]]
    preference_train: dict[str, list[Preference]]
    eval_reference: dict[str, list[Completion]]
    eval_preference: dict[str, list[Preference]]
    gold: GoldReward | None = None
    source: str = SYNTHETIC_SOURCE

    @property
    def domains(self) -> tuple[str, ...]:
        """Training domains, then held-out domains."""
        return self.train_domains + self.test_domains

    def records(self, part: str, domains: Sequence[str] | None = None) -> list[Any]:
        """Records of ``part`` (one of :data:`PARTS`) for ``domains`` (default: training)."""
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        table = getattr(self, part)
        chosen = self.train_domains if domains is None else tuple(domains)
        return [record for domain in chosen for record in table.get(domain, [])]

    def require(self, part: str, domains: Sequence[str] | None = None, *, purpose: str) -> None:
        """:class:`BadInputError` naming the domain when ``part`` has no records there."""
        chosen = self.train_domains if domains is None else tuple(domains)
        if not chosen:
            raise BadInputError(f"data: {purpose} needs at least one domain, none is configured")
        size_key = {
            "fine_tuning": "fine_tuning",
            "preference_train": "preference_train",
            "eval_reference": "eval_reference",
            "eval_preference": "eval_preference",
        }[part]
        for domain in chosen:
            if not getattr(self, part).get(domain):
                raise BadInputError(
                    f"data: domain {domain!r} has no {part} records, which {purpose} needs "
                    f"(source {self.source!r}; check data.domains and data.sizes.{size_key})"
                )

    def texts(self) -> list[str]:
        """Every prompt and response of every part and domain, once, in a fixed order."""
        seen: dict[str, None] = {}
        for part in PARTS:
            for domain in self.domains:
                for record in getattr(self, part).get(domain, []):
                    fields = (
                        (record.prompt, record.chosen, record.rejected)
                        if hasattr(record, "chosen")
                        else (record.prompt, record.response)
                    )
                    for text in fields:
                        seen.setdefault(text, None)
        return list(seen)

    def capped(self, max_examples: int) -> RunData:
        """A copy whose evaluation parts hold at most ``max_examples`` records per domain."""
        if max_examples <= 0:
            return self
        return dataclasses.replace(
            self,
            eval_reference={d: v[:max_examples] for d, v in self.eval_reference.items()},
            eval_preference={d: v[:max_examples] for d, v in self.eval_preference.items()},
        )

    def counts(self) -> dict[str, dict[str, int]]:
        """``{part: {domain: n}}`` (for logs and reports)."""
        return {
            part: {d: len(getattr(self, part).get(d, [])) for d in self.domains} for part in PARTS
        }


def _fold_domains(data: DataConfig) -> tuple[list[str], list[str]] | None:
    """(train, test) domains of a named fold in ``held_out`` (shp-group-N, I(a), ...)."""
    if data.protocol not in _FOLD_PROTOCOLS or len(data.held_out) != 1:
        return None
    from oodpl.data.splits import dporm_settings, shp_group_folds

    folds = (
        {fold.name: fold for fold in shp_group_folds()}
        if data.protocol == "shp-group-folds"
        else dporm_settings()
    )
    fold = folds.get(data.held_out[0])
    if fold is None:
        return None
    return list(fold.train_domains), list(fold.test_domains)


def split_domains(data: DataConfig, available: Sequence[str]) -> tuple[list[str], list[str]]:
    """(training, held-out) domains of a data config.

    ``data.domains`` (default: every ``available`` domain) minus ``data.held_out`` are trained on.
    With ``protocol: shp-group-folds`` or ``dporm-settings``, ``held_out`` may name one fold
    (``shp-group3``, ``I(a)``, ...) instead of domains.
    """
    fold = _fold_domains(data)
    if fold is not None:
        train, test = fold
        if data.domains:
            train = [d for d in train if d in data.domains]
        return train, test
    domains = list(data.domains) or list(available)
    held_out = list(data.held_out)
    unknown = [d for d in held_out if d not in domains]
    if unknown and data.domains:
        raise BadInputError(f"data.held_out: {unknown} are not in data.domains {domains}")
    domains += [d for d in held_out if d not in domains]
    train = [d for d in domains if d not in held_out]
    if not train:
        raise BadInputError("data.held_out holds every domain: nothing is left to train on")
    return train, held_out


def _synthetic_data(data: DataConfig) -> RunData:
    from oodpl.data.synthetic import DEFAULT_DOMAINS, SyntheticConfig
    from oodpl.data.synthetic.loader import cached_benchmark

    train, test = split_domains(data, DEFAULT_DOMAINS)
    sizes = data.sizes
    try:
        config = SyntheticConfig(
            domains=tuple(train + test),
            n_finetune=sizes.fine_tuning,
            n_pref_train=sizes.preference_train,
            n_eval_reference=sizes.eval_reference,
            n_eval_pref=sizes.eval_preference,
            seed=data.seed,
        )
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"data (synthetic benchmark): {exc}") from exc
    bench = cached_benchmark(config)
    return RunData(
        train_domains=tuple(train),
        test_domains=tuple(test),
        fine_tuning={d: list(bench.finetune[d]) for d in config.domains},
        preference_train={d: list(bench.pref_train[d]) for d in config.domains},
        eval_reference={d: list(bench.eval_reference[d]) for d in config.domains},
        eval_preference={d: list(bench.eval_pref[d]) for d in config.domains},
        gold=bench.gold,
        source=SYNTHETIC_SOURCE,
    )


def _registry_data(data: DataConfig) -> RunData:
    from oodpl.core.records import Preference
    from oodpl.data import registry
    from oodpl.data.splits import DomainSplitSizes, per_domain_splits

    if data.path is not None and not Path(data.path).expanduser().exists():
        raise PathNotFoundError(data.path, "data.path")
    with user_errors(f"data.source {data.source!r}"):
        spec = registry.get_source(data.source)
        wanted = None
        if data.domains or _fold_domains(data) is not None:
            train, test = split_domains(data, spec.domains)
            wanted = train + test
        try:
            loaded = registry.load(data.source, data.path, domains=wanted, lenient=data.lenient)
        except ValueError as exc:
            if "path:" in str(exc) or "use_hub" in str(exc):
                raise BadInputError(f"data.path: {exc}") from exc
            raise
    records = list(loaded)
    present = sorted({r.domain for r in records})
    train, test = split_domains(data, present)
    where = f"source {data.source!r} at {data.path}"
    for domain in train + test:
        if domain not in present:
            raise BadInputError(
                f"data.domains: no rows for domain {domain!r} in {where} "
                f"(domains present: {', '.join(present) or 'none'})"
            )
    preferences = [r for r in records if isinstance(r, Preference)]
    if not preferences:
        raise BadInputError(f"data: {where} holds no preference pairs (only completions)")
    sizes = DomainSplitSizes(
        fine_tuning=data.sizes.fine_tuning,
        preference_train=data.sizes.preference_train,
        eval_reference=data.sizes.eval_reference,
        eval_preference=data.sizes.eval_preference,
    )
    chosen = set(train + test)
    splits = per_domain_splits(
        [p for p in preferences if p.domain in chosen], sizes=sizes, seed=data.seed
    )
    return RunData(
        train_domains=tuple(train),
        test_domains=tuple(test),
        fine_tuning={d: s.fine_tuning for d, s in splits.items()},
        preference_train={d: s.preference_train for d, s in splits.items()},
        eval_reference={d: s.eval_reference for d, s in splits.items()},
        eval_preference={d: s.eval_preference for d, s in splits.items()},
        gold=None,
        source=data.source,
    )


def build_data(config: RunConfig | DataConfig) -> RunData:
    """The records of a run (see :class:`RunData`); errors name the ``data.*`` key at fault."""
    data = config.data if isinstance(config, RunConfig) else config
    if data.source.strip().lower() == SYNTHETIC_SOURCE:
        if data.path is not None:
            raise BadInputError("data.path: the synthetic benchmark is generated, it takes no path")
        return _synthetic_data(data)
    return _registry_data(data)


__all__ = ["PARTS", "SYNTHETIC_SOURCE", "RunData", "build_data", "split_domains", "user_errors"]

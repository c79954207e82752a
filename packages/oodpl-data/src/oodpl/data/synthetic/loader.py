"""``load_synthetic``: the synthetic benchmark as a record source named "synthetic".

The registry (``oodpl.data.registry``) registers this function under the source name
``"synthetic"``; it needs no files, only a configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from functools import lru_cache
from typing import Any

from oodpl.core.records import Completion, Preference

from .config import SyntheticConfig
from .generator import SPLITS, SyntheticBenchmark, generate_benchmark

#: Aliases accepted by :func:`load_synthetic` besides the four split names.
SPLIT_ALIASES: dict[str, str] = {
    "train": "pref_train",
    "test": "eval_pref",
    "sft": "finetune",
    "reference": "eval_reference",
}


@lru_cache(maxsize=8)
def cached_benchmark(config: SyntheticConfig) -> SyntheticBenchmark:
    """:func:`generate_benchmark`, memoised on the (hashable, frozen) configuration."""
    return generate_benchmark(config)


def load_synthetic(
    domains: Sequence[str] | None = None,
    split: str = "pref_train",
    **config: Any,
) -> list[Preference] | list[Completion]:
    """Records of one split of the synthetic benchmark.

    ``split``: one of "finetune", "pref_train", "eval_reference", "eval_pref" (or an alias in
    :data:`SPLIT_ALIASES`). ``domains``: the domains to generate and return (None: the default
    four); a domain's records do not depend on which other domains are generated.
    ``config``: any other :class:`SyntheticConfig` field (``seed``, ``temperature``,
    ``n_pref_train``, ...). Benchmarks are memoised per configuration, so the returned records
    (and their ``meta`` dicts) are shared between calls: treat them as read-only.
    """
    if not isinstance(split, str):
        raise TypeError(f"split must be a str, got {type(split).__name__}")
    canonical = SPLIT_ALIASES.get(split, split)
    if canonical not in SPLITS:
        names = ", ".join((*SPLITS, *SPLIT_ALIASES))
        raise ValueError(f"split must be one of {names}; got {split!r}")
    if isinstance(domains, str):
        domains = [domains]
    if domains is not None:
        domains = tuple(domains)
        if not domains:
            raise ValueError("domains must name at least one domain (or be None for all)")
        config["domains"] = domains
    accepted = {item.name for item in fields(SyntheticConfig) if item.init}
    unknown_fields = sorted(set(config) - accepted)
    if unknown_fields:
        raise TypeError(
            f"load_synthetic got unknown config fields {unknown_fields}; "
            f"SyntheticConfig accepts {sorted(accepted)}"
        )
    benchmark = cached_benchmark(SyntheticConfig(**config))
    return benchmark.records(canonical, domains)

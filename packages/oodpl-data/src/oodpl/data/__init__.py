"""oodpl.data: preference records, dataset loaders, OOD split protocols, the synthetic
benchmark and LLM labelling (see packages/oodpl-data/README.md).

The names most code needs are importable from here::

    from oodpl.data import load, list_sources, leave_one_domain_out, apply_fold
    bench = load("synthetic", domains=["books", "dvd"], split="pref_train")

Importing this package is light: records, errors, the registry, the split protocols and the
synthetic benchmark load eagerly (torch via :mod:`oodpl.core`, nothing from ``datasets`` or
``openai``); :mod:`oodpl.data.labelling`, :mod:`oodpl.data.sources` and :mod:`oodpl.data.io`
load on first attribute access (``oodpl.data.labelling``), through the module ``__getattr__``.
"""

from __future__ import annotations

import importlib
from typing import Any

from oodpl.data.errors import DataFormatError, UnknownDomainError, UnknownSourceError
from oodpl.data.records import (
    Completion,
    LoadResult,
    LoadSummary,
    Preference,
    from_dataset,
    from_trl_rows,
    to_dataset,
    to_trl_rows,
)
from oodpl.data.registry import (
    SourceSpec,
    get_source,
    list_sources,
    load,
    register_source,
    source_info,
)
from oodpl.data.splits import (
    PAPER_SPLIT_SIZES,
    SHP_GROUPS,
    DomainSplit,
    DomainSplitSizes,
    Fold,
    FoldSplit,
    apply_fold,
    dporm_settings,
    leave_one_domain_out,
    per_domain_splits,
    prompt_key,
    shp_group_folds,
    split_domain,
    train_test_split_by_prompt,
)
from oodpl.data.synthetic import GoldReward, SyntheticConfig, generate_benchmark, load_synthetic

__version__ = "0.1.0"

#: Submodules imported on first access (labelling holds the OpenAI-compatible client).
_LAZY_SUBMODULES = frozenset({"labelling", "sources", "io"})


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module(f"oodpl.data.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'oodpl.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES)


__all__ = [
    "PAPER_SPLIT_SIZES",
    "SHP_GROUPS",
    "Completion",
    "DataFormatError",
    "DomainSplit",
    "DomainSplitSizes",
    "Fold",
    "FoldSplit",
    "GoldReward",
    "LoadResult",
    "LoadSummary",
    "Preference",
    "SourceSpec",
    "SyntheticConfig",
    "UnknownDomainError",
    "UnknownSourceError",
    "apply_fold",
    "dporm_settings",
    "from_dataset",
    "from_trl_rows",
    "generate_benchmark",
    "get_source",
    "leave_one_domain_out",
    "list_sources",
    "load",
    "load_synthetic",
    "per_domain_splits",
    "prompt_key",
    "register_source",
    "shp_group_folds",
    "source_info",
    "split_domain",
    "to_dataset",
    "to_trl_rows",
    "train_test_split_by_prompt",
]

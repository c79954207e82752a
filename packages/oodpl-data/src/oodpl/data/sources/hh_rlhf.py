"""Anthropic HH-RLHF: helpful and harmless dialogues, one domain per subset.

Upstream layout (``Anthropic/hh-rlhf``): ``<root>/<subset>/{train,test}.jsonl.gz`` with subsets
``helpful-base``, ``helpful-online``, ``helpful-rejection-sampled`` and ``harmless-base``; each line
``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}`` holding two whole
dialogues that differ in the final assistant turn.

Record: ``prompt`` = the shared dialogue up to and including the last ``"\\n\\nAssistant:"``
common to both texts; ``chosen``/``rejected`` = the rest of each text (so ``prompt + chosen`` is
the upstream ``chosen`` exactly); ``domain`` = the subset. (``red-team-attempts`` has a different
schema, no preference pairs, and is not read.) A file path reads that file; its domain is the
name of the directory holding it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from oodpl.data.io import Row
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import SourceSpec, expect_mapping, file_rows, get, process_each
from oodpl.data.sources._dialogue import split_shared_prefix

HH_DOMAINS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")
SPLITS = ("train", "test")
SOURCE = "hh-rlhf"


def _file_for(directory: Path, split: str) -> Path | None:
    for name in (f"{split}.jsonl.gz", f"{split}.jsonl"):
        if (directory / name).is_file():
            return directory / name
    return None


def rows(
    path: Path,
    collector: RecordCollector,
    *,
    domains: tuple[str, ...],
    split: str,
    **_options: object,
) -> Iterable[Row]:
    if path.is_file():
        hint = path.parent.name
        if hint not in HH_DOMAINS:
            raise ValueError(
                f"path: cannot tell the HH-RLHF subset of {str(path)!r}; keep the upstream "
                f"<subset>/{split}.jsonl.gz layout (subsets: {', '.join(HH_DOMAINS)})"
            )
        return file_rows([(path, hint)], collector)
    if not path.is_dir():
        raise FileNotFoundError(f"path: {str(path)!r} does not exist (HH-RLHF root directory)")
    wanted = domains or HH_DOMAINS
    found = [(_file_for(path / d, split), d) for d in wanted]
    missing = [d for f, d in found if f is None]
    if domains and missing:
        raise FileNotFoundError(f"path: no {split}.jsonl.gz for subset(s) {missing} in {path}")
    present = [(f, d) for f, d in found if f is not None]
    if not present:
        raise FileNotFoundError(
            f"path: no HH-RLHF files under {str(path)!r} (expected <subset>/{split}.jsonl.gz)"
        )
    return file_rows(present, collector)


def process(rows: Iterable[Row], collector: RecordCollector, *, split: str | None = None) -> None:
    def handle(row: Row) -> None:
        data = expect_mapping(row)
        chosen = get(row, data, "chosen", str)
        rejected = get(row, data, "rejected", str)
        if row.hint not in HH_DOMAINS:
            raise row.error(f"unknown HH-RLHF subset {row.hint!r}", reason="unknown_domain")
        if chosen == rejected:
            collector.add_preference(
                row, prompt=chosen, chosen=chosen, rejected=rejected, domain=row.hint, source=SOURCE
            )
            return
        try:
            prompt, chosen_reply, rejected_reply = split_shared_prefix(chosen, rejected)
        except ValueError as exc:
            raise row.error(str(exc), field="chosen", reason="bad_value") from None
        collector.add_preference(
            row,
            prompt=prompt,
            chosen=chosen_reply,
            rejected=rejected_reply,
            domain=row.hint,
            source=SOURCE,
        )

    process_each(rows, collector, handle)


def hub_requests(domains: tuple[str, ...], split: str | None):
    return [({"data_dir": d, "split": split}, d) for d in (domains or HH_DOMAINS)]


SPEC = SourceSpec(
    name=SOURCE,
    description="Anthropic HH-RLHF helpful/harmless dialogues; each subset is a domain",
    domains=HH_DOMAINS,
    record_type="preference",
    path_hint="<root>/<subset>/{train,test}.jsonl.gz (git clone of Anthropic/hh-rlhf)",
    hub_id="Anthropic/hh-rlhf",
    splits=SPLITS,
    default_split="train",
    rows=rows,
    process=process,
    hub_requests=hub_requests,
    aliases=("hh", "anthropic-hh"),
    homepage="https://huggingface.co/datasets/Anthropic/hh-rlhf",
)

"""Amazon multi-domain sentiment reviews (Blitzer, Dredze & Pereira 2007): CSG raw reviews.

Upstream layout (``sorted_data_acl`` from ``domain_sentiment_data.tar.gz``):
``<root>/{books,dvd,electronics,kitchen_&_housewares}/{positive,negative,unlabeled}.review``
(a ``kitchen`` directory is accepted too). Each file is pseudo-XML, not valid XML (raw ``&`` and
``<`` occur in the text, encoding is mostly latin-1): a sequence of blocks ::

    <review>
    <unique_id>
    0312203233:great_read:reader
    </unique_id>
    <asin> ... </asin> <product_name> ... </product_name> <product_type> ... </product_type>
    <helpful> ... </helpful> <rating> 5.0 </rating> <title> ... </title> <date> ... </date>
    <reviewer> ... </reviewer> <reviewer_location> ... </reviewer_location>
    <review_text>
    ...
    </review_text>
    </review>

(``processed_acl`` holds the same reviews as bags of n-gram counts, ``word:1 ... #label#:positive``;
the text cannot be recovered from it, so it is rejected with a message pointing here.)

Records are fine-tuning :class:`Completion` s for the sentiment domains ``books, dvd,
electronics, kitchen`` (METHODS §3): ``prompt`` = the first ``prompt_words`` words of the review
(at most all but one), ``response`` = the rest, so ``prompt + response`` is the review text with
its whitespace normalised. ``meta`` keeps ``sentiment`` (from the file; for ``unlabeled.review``
from the rating: >3 positive, <3 negative, 3 neutral), ``rating``, ``title``, ``product_name``,
``asin``, ``unique_id``, ``label_file``. ``files=("positive", "negative")`` by default; add
``"unlabeled"`` to read those too. :func:`read_reviews` gives the parsed reviews themselves
(what the CSG pair labeller starts from).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from oodpl.data.errors import DataFormatError
from oodpl.data.io import Row, read_text
from oodpl.data.records import RecordCollector
from oodpl.data.sources._common import SourceSpec, get, process_each

AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")
DIRECTORY_NAMES = {
    "books": ("books",),
    "dvd": ("dvd",),
    "electronics": ("electronics",),
    "kitchen": ("kitchen_&_housewares", "kitchen", "kitchen_housewares"),
}
LABEL_FILES = ("positive", "negative", "unlabeled")
SOURCE = "amazon"
_TAG = re.compile(r"<([a-z_]+)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class AmazonReview:
    """One parsed review; ``sentiment`` is ``positive``, ``negative`` or ``neutral``."""

    domain: str
    text: str
    sentiment: str
    label_file: str
    rating: float | None
    title: str
    product_name: str
    asin: str
    unique_id: str
    path: str
    line: int


def _domain_dirs(root: Path, domains: Sequence[str]) -> list[tuple[str, Path]]:
    found = []
    for domain in domains:
        for name in DIRECTORY_NAMES[domain]:
            if (root / name).is_dir():
                found.append((domain, root / name))
                break
    return found


def review_blocks(path: Path, hint: str, on_error) -> Iterator[Row]:
    """Rows of ``{tag: text}`` for each ``<review>`` block of one ``.review`` file."""
    try:
        text = read_text(path)
    except DataFormatError as err:
        on_error(err)
        return
    if "<review>" not in text:
        if "#label#:" in text:
            on_error(
                DataFormatError(
                    "this is the processed_acl bag-of-n-grams format; the review text cannot be "
                    "recovered from it: use sorted_data_acl (pseudo-XML <review> blocks)",
                    path=path,
                    line=1,
                    reason="malformed_review",
                )
            )
        elif not text.strip():
            on_error(DataFormatError("file holds no reviews", path=path, reason="empty_file"))
        else:
            on_error(
                DataFormatError(
                    "no <review> block found", path=path, line=1, reason="malformed_review"
                )
            )
        return
    pos = 0
    line = 1
    while True:
        start = text.find("<review>", pos)
        if start < 0:
            return
        line += text.count("\n", pos, start)
        end = text.find("</review>", start)
        following = text.find("<review>", start + 8)
        if end < 0 or (0 <= following < end):
            on_error(
                DataFormatError(
                    "<review> block is not closed by </review>",
                    path=path,
                    line=line,
                    reason="malformed_review",
                )
            )
            if following < 0:
                return
            pos = following
            continue
        tags: dict[str, str] = {}
        for match in _TAG.finditer(text, start + 8, end):
            tags.setdefault(match.group(1), match.group(2).strip())
        yield Row(str(path), line, tags, hint=hint)
        pos = end + 9


def rows(
    path: Path,
    collector: RecordCollector,
    *,
    domains: tuple[str, ...],
    split: str | None,
    files: Sequence[str] = ("positive", "negative"),
    **_options: object,
) -> Iterable[Row]:
    _check_files(files)
    if path.is_file():
        domain = _domain_from_dir(path.parent.name)
        return _file_rows([(path, domain, path.name.split(".")[0])], collector)
    if not path.is_dir():
        raise FileNotFoundError(f"path: {str(path)!r} does not exist (sorted_data_acl directory)")
    wanted = domains or AMAZON_DOMAINS
    found = _domain_dirs(path, wanted)
    missing = sorted(set(wanted) - {d for d, _ in found})
    if (domains and missing) or not found:
        raise FileNotFoundError(
            f"path: no review directory for {missing or list(wanted)} under {str(path)!r} "
            f"(expected e.g. books/positive.review)"
        )
    jobs = []
    for domain, directory in found:
        for label in files:
            review = directory / f"{label}.review"
            if not review.is_file():
                raise FileNotFoundError(f"path: missing {str(review)!r}")
            jobs.append((review, domain, label))
    return _file_rows(jobs, collector)


def _domain_from_dir(name: str) -> str:
    for domain, names in DIRECTORY_NAMES.items():
        if name in names:
            return domain
    raise ValueError(
        f"path: cannot tell the domain of directory {name!r}; expected one of "
        f"{sorted(n for names in DIRECTORY_NAMES.values() for n in names)}"
    )


def _file_rows(jobs, collector: RecordCollector) -> Iterator[Row]:
    for review, domain, label in jobs:
        collector.add_file(review)
        yield from review_blocks(review, f"{domain}/{label}", collector.skip)


def _sentiment(label: str, rating: float | None) -> str:
    if label in ("positive", "negative"):
        return label
    if rating is None:
        return "unknown"
    return "positive" if rating > 3 else "negative" if rating < 3 else "neutral"


def parse_review(row: Row) -> AmazonReview:
    """An :class:`AmazonReview` from a block row; ``DataFormatError`` for missing/bad fields."""
    tags = row.data
    domain, label = (row.hint or "/").split("/", 1)
    text = get(row, tags, "review_text", str)
    rating_text = get(row, tags, "rating", str, optional=True)
    try:
        rating = float(rating_text) if rating_text else None
    except ValueError:
        raise row.error(
            f"expected a number, got {rating_text!r}", field="rating", reason="wrong_type"
        ) from None
    return AmazonReview(
        domain=domain,
        text=" ".join(text.split()),
        sentiment=_sentiment(label, rating),
        label_file=label,
        rating=rating,
        title=tags.get("title", ""),
        product_name=tags.get("product_name", ""),
        asin=tags.get("asin", ""),
        unique_id=tags.get("unique_id", ""),
        path=row.path,
        line=row.line or 0,
    )


def split_prefix(text: str, prompt_words: int) -> tuple[str, str]:
    """``(first k words, " " + the rest)`` with ``k = min(prompt_words, n_words - 1)``."""
    words = text.split()
    k = max(0, min(prompt_words, len(words) - 1))
    return " ".join(words[:k]), (" " + " ".join(words[k:])) if k else " ".join(words[k:])


def process(
    rows: Iterable[Row],
    collector: RecordCollector,
    *,
    split: str | None = None,
    files: Sequence[str] = ("positive", "negative"),
    prompt_words: int = 8,
) -> None:
    if isinstance(prompt_words, bool) or not isinstance(prompt_words, int) or prompt_words < 1:
        raise ValueError(f"prompt_words: expected an int >= 1, got {prompt_words!r}")

    def handle(row: Row) -> None:
        review = parse_review(row)
        prompt, response = split_prefix(review.text, prompt_words)
        meta = {
            "sentiment": review.sentiment,
            "rating": review.rating,
            "title": review.title,
            "product_name": review.product_name,
            "asin": review.asin,
            "unique_id": review.unique_id,
            "label_file": review.label_file,
        }
        collector.add_completion(
            row, prompt=prompt, response=response, domain=review.domain, source=SOURCE, meta=meta
        )

    process_each(rows, collector, handle)


def read_reviews(
    path: str | Path,
    *,
    domains: Sequence[str] | None = None,
    files: Sequence[str] = ("positive", "negative"),
    lenient: bool = False,
) -> list[AmazonReview]:
    """Parsed reviews under a ``sorted_data_acl`` directory (or one ``.review`` file)."""
    _check_files(files)
    collector = RecordCollector(SOURCE, lenient=lenient)
    reviews = []
    for row in rows(Path(path), collector, domains=tuple(domains or ()), split=None, files=files):
        try:
            reviews.append(parse_review(row))
        except DataFormatError as err:
            collector.skip(err)
    return reviews


def _check_files(files: Sequence[str]) -> None:
    bad = [f for f in files if f not in LABEL_FILES]
    if bad or not files:
        raise ValueError(
            f"files: expected a non-empty subset of {list(LABEL_FILES)}, got {files!r}"
        )


SPEC = SourceSpec(
    name=SOURCE,
    description="Amazon multi-domain sentiment reviews (books, dvd, electronics, kitchen) as "
    "fine-tuning completions",
    domains=AMAZON_DOMAINS,
    record_type="completion",
    path_hint="<root>/sorted_data_acl/<domain>/{positive,negative,unlabeled}.review",
    hub_id=None,
    splits=(),
    default_split=None,
    rows=rows,
    process=process,
    options={"files": ("positive", "negative"), "prompt_words": 8},
    aliases=("amazon-reviews", "blitzer"),
    homepage="https://www.cs.jhu.edu/~mdredze/datasets/sentiment/",
)

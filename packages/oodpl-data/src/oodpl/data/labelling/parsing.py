"""Strict parsing of model replies (METHODS §3): a reply that breaks the format is *unparseable*,
counted with its reason, never guessed.

Judge replies: after stripping, the last non-empty line must be exactly ``1`` or ``2``
(whitespace around it allowed; no punctuation, words, markdown or "tie").

Pair-generation replies: exactly four non-empty lines, in this order, each label written exactly
so followed by a non-empty value::

    PREFIX: <prefix>
    REVIEW 1: <review starting with the prefix>
    REVIEW 2: <review starting with the prefix>
    MORE POSITIVE: 1|2

Both reviews must start with the prefix as whole words (compared after collapsing whitespace),
continue past it, and differ from each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class JudgeVerdict:
    """``choice`` is 1 or 2, or None with ``reason`` saying why the reply was unparseable."""

    choice: int | None
    reason: str | None = None

    @property
    def parsed(self) -> bool:
        return self.choice is not None


def parse_judge_reply(text: str | None) -> JudgeVerdict:
    if not isinstance(text, str) or not text.strip():
        return JudgeVerdict(None, "empty reply")
    last = [line.strip() for line in text.strip().splitlines() if line.strip()][-1]
    if last in ("1", "2"):
        return JudgeVerdict(int(last))
    return JudgeVerdict(None, f"final line {last[:60]!r} is not exactly 1 or 2")


@dataclass(frozen=True)
class PairReply:
    """A parsed pair-generation reply; continuations are the reviews with the prefix removed."""

    prefix: str
    review_1: str
    review_2: str
    more_positive: int
    continuation_1: str
    continuation_2: str


@dataclass(frozen=True)
class PairParse:
    reply: PairReply | None
    reason: str | None = None

    @property
    def parsed(self) -> bool:
        return self.reply is not None


_LABELS = ("PREFIX:", "REVIEW 1:", "REVIEW 2:", "MORE POSITIVE:")


def _collapse(text: str) -> str:
    return " ".join(text.split())


def parse_pair_reply(text: str | None) -> PairParse:
    if not isinstance(text, str) or not text.strip():
        return PairParse(None, "empty reply")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) != len(_LABELS):
        return PairParse(None, f"expected {len(_LABELS)} non-empty lines, got {len(lines)}")
    values = []
    for number, (line, label) in enumerate(zip(lines, _LABELS, strict=True), start=1):
        if not line.startswith(label):
            return PairParse(None, f"line {number} does not start with {label!r}")
        value = _collapse(line[len(label) :])
        if not value:
            return PairParse(None, f"line {number} ({label}) is empty")
        values.append(value)
    prefix, review_1, review_2, verdict = values
    if verdict not in ("1", "2"):
        return PairParse(None, f"MORE POSITIVE is {verdict[:20]!r}, not exactly 1 or 2")
    continuations = []
    for name, review in (("REVIEW 1", review_1), ("REVIEW 2", review_2)):
        if review == prefix:
            return PairParse(None, f"{name} has nothing after the prefix")
        if not review.startswith(prefix) or review[len(prefix)].isalnum():
            return PairParse(None, f"{name} does not start with the prefix (as whole words)")
        rest = review[len(prefix) :].strip()
        continuations.append(rest)
    if continuations[0] == continuations[1]:
        return PairParse(None, "REVIEW 1 and REVIEW 2 are identical")
    return PairParse(
        PairReply(prefix, review_1, review_2, int(verdict), continuations[0], continuations[1])
    )

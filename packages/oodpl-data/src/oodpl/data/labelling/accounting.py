"""Token and cost accounting, token estimates and the token budget.

Estimates (used by the dry run and the budget before a call is made): a text costs
``ceil(len(text) / 4)`` tokens (:data:`CHARS_PER_TOKEN`; roughly right for English with
OpenAI's tokenisers, and deliberately simple), each chat message adds
:data:`MESSAGE_OVERHEAD_TOKENS`, and a completion is assumed to use its full ``max_tokens``
(``max_completion_tokens``), an upper bound. Actual usage comes from each response's ``usage``;
when an endpoint omits it, the estimate of the reply text is counted and flagged.
Cost = ``prompt_tokens · input_price + completion_tokens · output_price`` with prices per
million tokens from a :class:`PriceTable` (unknown model: cost None, never a guess).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """``ceil(len(text) / 4)``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """Σ over messages of ``estimate_tokens(content) + 4``."""
    return sum(
        estimate_tokens(str(message.get("content", ""))) + MESSAGE_OVERHEAD_TOKENS
        for message in messages
    )


def completion_allowance(params: Mapping[str, Any], default_max_tokens: int) -> int:
    """The completion tokens a call may use: its ``max_completion_tokens``/``max_tokens``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = params.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return default_max_tokens


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million input (prompt) and output (completion) tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"ModelPrice.{name} must be a non-negative number, got {value!r}")


class PriceTable:
    """Model name → :class:`ModelPrice`. Load from JSON: ``{"model": {"input_per_million": ..,
    "output_per_million": ..}}``."""

    def __init__(self, prices: Mapping[str, ModelPrice | Mapping[str, float]] | None = None):
        self._prices: dict[str, ModelPrice] = {}
        for model, price in (prices or {}).items():
            if isinstance(price, ModelPrice):
                self._prices[model] = price
            elif isinstance(price, Mapping):
                try:
                    self._prices[model] = ModelPrice(**price)
                except TypeError as err:
                    raise ValueError(f"price of model {model!r}: {err}") from None
            else:
                raise TypeError(f"price of model {model!r} must be a mapping, got {price!r}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PriceTable:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"price table {os.fspath(path)}: invalid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"price table {os.fspath(path)} must hold a JSON object")
        try:
            return cls(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"price table {os.fspath(path)}: {err}") from None

    def get(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        price = self._prices.get(model)
        if price is None:
            return None
        return (
            prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million
        ) / 1e6


@dataclass
class UsageLedger:
    """Counts of one labelling run. ``calls`` are HTTP requests that returned a completion;
    ``cache_hits`` cost nothing; ``retries`` are re-sent requests; ``failed`` gave up."""

    model: str = ""
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_usage_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def record_call(self, prompt_tokens: int, completion_tokens: int, estimated: bool) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.estimated_usage_calls += int(estimated)

    def cost(self, prices: PriceTable | None) -> float | None:
        if prices is None:
            return None
        return prices.cost(self.model, self.prompt_tokens, self.completion_tokens)

    def to_dict(self, prices: PriceTable | None = None) -> dict[str, Any]:
        data = asdict(self)
        data["total_tokens"] = self.total_tokens
        data["cost_usd"] = self.cost(prices)
        return data


class TokenBudget:
    """Stops before exceeding ``limit`` total tokens (None: unlimited).

    A call may start only if ``spent + reserved + estimate <= limit``, where ``estimate`` is the
    call's prompt estimate plus its completion allowance (an upper bound) and ``reserved`` sums
    the estimates of calls still in flight; when it finishes its reservation is replaced by its
    actual usage. Completions cannot exceed their allowance, so the limit can only be overshot
    when a prompt uses more tokens than its ``chars/4`` estimate (non-English text can).
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and (not isinstance(limit, int) or limit <= 0):
            raise ValueError(f"token budget must be a positive int or None, got {limit!r}")
        self.limit = limit
        self.spent = 0
        self.reserved = 0

    def try_reserve(self, estimate: int) -> bool:
        if self.limit is not None and self.spent + self.reserved + estimate > self.limit:
            return False
        self.reserved += estimate
        return True

    def settle(self, estimate: int, actual: int) -> None:
        self.reserved -= estimate
        self.spent += actual

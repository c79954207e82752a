"""Dry run: how many calls a labelling run would make and roughly how many tokens, for free.

Identical requests count once; requests already in the cache cost nothing. Token estimates are
those of :mod:`oodpl.data.labelling.accounting`: prompt ``ceil(chars/4) + 4`` per message, and
each call's completion allowance (``max_tokens``) as an upper bound for its reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from .accounting import PriceTable, completion_allowance, estimate_prompt_tokens
from .cache import ResponseCache
from .client import ChatRequest

DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class DryRunReport:
    model: str
    n_requests: int
    n_unique: int
    n_cached: int
    n_to_call: int
    est_prompt_tokens: int
    est_completion_tokens: int
    est_cost_usd: float | None

    @property
    def est_total_tokens(self) -> int:
        return self.est_prompt_tokens + self.est_completion_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "est_total_tokens": self.est_total_tokens}

    def format(self) -> str:
        cost = "unknown (no price for this model)"
        if self.est_cost_usd is not None:
            cost = f"${self.est_cost_usd:.4f} (upper bound)"
        return "\n".join(
            [
                f"dry run for model {self.model}",
                f"  requests:        {self.n_requests} ({self.n_unique} unique)",
                f"  already cached:  {self.n_cached}",
                f"  calls to make:   {self.n_to_call}",
                f"  est. prompt tokens:     {self.est_prompt_tokens} (chars/4 + 4 per message)",
                f"  est. completion tokens: {self.est_completion_tokens} (max_tokens per call)",
                f"  est. total tokens:      {self.est_total_tokens}",
                f"  est. cost:       {cost}",
            ]
        )


def dry_run(
    requests: Sequence[ChatRequest],
    *,
    model: str,
    cache: ResponseCache | None = None,
    prices: PriceTable | None = None,
    default_max_tokens: int = DEFAULT_MAX_TOKENS,
) -> DryRunReport:
    """Count the calls ``requests`` would need against ``model`` given ``cache``; no network."""
    seen: set[str] = set()
    cached = prompt_tokens = completion_tokens = 0
    for request in requests:
        key = request.key(model)
        if key in seen:
            continue
        seen.add(key)
        if cache is not None and key in cache:
            cached += 1
            continue
        prompt_tokens += estimate_prompt_tokens(request.messages)
        completion_tokens += completion_allowance(request.params, default_max_tokens)
    cost = prices.cost(model, prompt_tokens, completion_tokens) if prices is not None else None
    return DryRunReport(
        model=model,
        n_requests=len(requests),
        n_unique=len(seen),
        n_cached=cached,
        n_to_call=len(seen) - cached,
        est_prompt_tokens=prompt_tokens,
        est_completion_tokens=completion_tokens,
        est_cost_usd=cost,
    )

"""Endpoint settings: where calls go, how failures are retried, where the key comes from.

The API key is read from the environment variable named by ``ClientConfig.api_key_env``
(default ``OPENAI_API_KEY``) and nowhere else; a loopback ``base_url`` (the offline judge
server) works without it. ``Backoff`` is the retry schedule of
:class:`~oodpl.data.labelling.client.LabellingClient`, deterministic given its seed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import random
from dataclasses import dataclass, field
from urllib.parse import urlparse

from .accounting import TokenBudget

LOOPBACK_PLACEHOLDER_KEY = "oodpl-loopback-no-key"


class EndpointRefusedError(RuntimeError):
    """The endpoint refused the run (bad key, no access, unknown model): retrying cannot help."""


@dataclass(frozen=True)
class Backoff:
    """``delay(attempt) = max(min(initial · factor^attempt, max) · (1 − jitter · u), retry_after)``
    with ``u ~ U[0, 1)`` from ``random.Random(seed)`` (jitter 0: fully deterministic)."""

    initial_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("initial_s", "factor", "max_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"Backoff.{name} must be a non-negative number, got {value!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff.jitter must lie in [0, 1], got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        base = min(self.initial_s * self.factor**attempt, self.max_s)
        value = base * (1.0 - self.jitter * rng.random()) if self.jitter else base
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            value = max(value, min(retry_after, self.max_s))
        return value


@dataclass(frozen=True)
class ClientConfig:
    """Where to send calls and how. Holds the *name* of the key variable, never the key."""

    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_in_flight: int = 8
    max_retries: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    timeout_s: float = 120.0
    token_budget: int | None = None
    max_calls: int | None = None
    default_max_tokens: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("ClientConfig.model must be a non-empty string")
        if not isinstance(self.api_key_env, str) or not self.api_key_env.strip():
            raise ValueError("ClientConfig.api_key_env must name an environment variable")
        for name in ("max_in_flight", "default_max_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ClientConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"ClientConfig.max_retries must be >= 0, got {self.max_retries!r}")
        if self.max_calls is not None and (
            not isinstance(self.max_calls, int) or self.max_calls < 0
        ):
            raise ValueError(f"ClientConfig.max_calls must be >= 0 or None, got {self.max_calls!r}")
        if not isinstance(self.timeout_s, (int, float)) or not self.timeout_s > 0:
            raise ValueError(f"ClientConfig.timeout_s must be positive, got {self.timeout_s!r}")
        TokenBudget(self.token_budget)  # validates


def is_loopback_url(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(config: ClientConfig) -> str:
    """The key from ``os.environ[config.api_key_env]``; a placeholder for loopback endpoints."""
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if is_loopback_url(config.base_url):
        return LOOPBACK_PLACEHOLDER_KEY
    raise ValueError(
        f"environment variable {config.api_key_env} is not set: export the API key there "
        "(keys are read from the environment only)"
    )

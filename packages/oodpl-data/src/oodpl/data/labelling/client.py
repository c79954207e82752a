"""Chat-completion calls to any OpenAI-compatible endpoint: concurrency, retries, cache, budget.

- The endpoint is ``base_url`` + ``model`` (:mod:`~oodpl.data.labelling.endpoint`); the API key
  comes from the environment variable named by ``ClientConfig.api_key_env`` only. It is never
  logged, cached or written: error texts pass through a redactor before they are logged or
  returned. A loopback ``base_url`` (the offline judge server) works without the variable.
- Up to ``max_in_flight`` requests run at once (asyncio workers on one ``openai.AsyncOpenAI``).
- Retries: the openai client's own retries are switched off (``max_retries=0``) so the policy is
  ours and testable: HTTP 408/409/429/5xx, connection errors, timeouts and unreadable response
  bodies are retried up to ``max_retries`` times after ``Backoff.delay(attempt)`` seconds
  (exponential, capped, with a seeded jitter, never shorter than the server's Retry-After);
  ``sleep`` is injectable. 401/403/404 abort the run (:class:`EndpointRefusedError`); other 4xx
  fail that one request.
- Cache: every reply the endpoint returned is stored under ``cache_key(model, messages, params)``
  before the run moves on; a cached request costs nothing (METHODS §3 labelling runs resume).
- Budget and limit: a call starts only if it fits the :class:`TokenBudget` (estimated prompt
  tokens + completion allowance) and fewer than ``max_calls`` calls were made; otherwise the run
  stops issuing calls (cached requests are still answered) and reports ``stop_reason``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from .accounting import (
    PriceTable,
    TokenBudget,
    UsageLedger,
    completion_allowance,
    estimate_prompt_tokens,
    estimate_tokens,
)
from .cache import CachedReply, ResponseCache, cache_key
from .endpoint import ClientConfig, EndpointRefusedError, resolve_api_key

log = logging.getLogger("oodpl.data.labelling")

_ROLES = frozenset({"system", "user", "assistant", "developer"})
_FATAL_STATUS = frozenset({401, 403, 404})

Status = Literal["ok", "cached", "error", "budget", "limit"]


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completion request: ``messages`` plus sampling ``params`` (part of the cache key).

    ``tag`` is a caller's label (item id, order) and not part of the key.
    """

    messages: tuple[Mapping[str, str], ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    tag: str = ""

    def __post_init__(self) -> None:
        messages = tuple(MappingProxyType(dict(m)) for m in self.messages)
        if not messages:
            raise ValueError("ChatRequest.messages must not be empty")
        for index, message in enumerate(messages):
            if message.get("role") not in _ROLES or not isinstance(message.get("content"), str):
                raise ValueError(
                    f"ChatRequest.messages[{index}] needs a role in {sorted(_ROLES)} and a "
                    "str content"
                )
        object.__setattr__(self, "messages", messages)
        if "model" in self.params or "messages" in self.params:
            raise ValueError("ChatRequest.params must not set 'model' or 'messages'")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def key(self, model: str) -> str:
        return cache_key(model, self.messages, self.params)


@dataclass(frozen=True)
class ChatResult:
    """Outcome of one request: ``ok`` (called now), ``cached``, ``error`` (gave up), or not run
    because the run stopped (``budget``, ``limit``)."""

    request: ChatRequest
    key: str
    status: Status
    content: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status in ("ok", "cached")


@dataclass
class RunReport:
    results: list[ChatResult]
    ledger: UsageLedger
    stop_reason: Literal["budget", "limit"] | None = None

    def count(self, status: Status) -> int:
        return sum(1 for result in self.results if result.status == status)


ResultCallback = Callable[[int, ChatResult], None]


class LabellingClient:
    """Runs :class:`ChatRequest` lists against one endpoint (see the module docstring)."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        cache: ResponseCache | None = None,
        prices: PriceTable | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.cache = cache if cache is not None else ResponseCache(None)
        self.prices = prices
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._rng = random.Random(config.backoff.seed)
        self._secret = ""

    def run(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None):
        """Synchronous :meth:`arun` (not from inside a running event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(requests, on_result))
        raise RuntimeError("LabellingClient.run called inside an event loop: await arun() instead")

    async def arun(
        self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None
    ) -> RunReport:
        """Answer every request (cache first), ``max_in_flight`` at a time, in order of dispatch.

        ``on_result(index, result)`` is called as each result arrives (in the event loop thread).
        """
        model = self.config.model
        keys = [request.key(model) for request in requests]
        results: list[ChatResult | None] = [None] * len(requests)
        ledger = UsageLedger(model=model)
        budget = TokenBudget(self.config.token_budget)
        state: dict[str, Any] = {"next": 0, "stop": None, "calls_started": 0}
        pending: dict[str, asyncio.Future[ChatResult]] = {}

        def deliver(index: int, result: ChatResult) -> None:
            results[index] = result
            if on_result is not None:
                on_result(index, result)

        if all(key in self.cache for key in keys):  # nothing to call: no key, no connection
            for index, (request, key) in enumerate(zip(requests, keys, strict=True)):
                ledger.cache_hits += 1
                deliver(index, _from_cache(request, key, self.cache.get(key)))
            return RunReport([r for r in results if r is not None], ledger, None)
        self._secret = resolve_api_key(self.config)
        import openai  # deferred: importing oodpl.data (or a fully cached run) needs no client

        async def worker(api: Any) -> None:
            while state["next"] < len(requests):
                index = state["next"]
                state["next"] += 1
                request, key = requests[index], keys[index]
                cached = self.cache.get(key)
                if cached is not None:
                    ledger.cache_hits += 1
                    deliver(index, _from_cache(request, key, cached))
                    continue
                if key in pending:  # an identical request is in flight: share its answer
                    shared = await pending[key]
                    deliver(index, replace(shared, request=request))
                    continue
                reason = self._stop_reason(state, budget, request)
                if reason is not None:
                    state["stop"] = state["stop"] or reason
                    deliver(index, ChatResult(request, key, reason))
                    continue
                estimate = self._estimate(request)
                state["calls_started"] += 1
                future: asyncio.Future[ChatResult] = asyncio.get_running_loop().create_future()
                pending[key] = future
                try:
                    result = await self._call(api, openai, request, key, ledger)
                finally:
                    del pending[key]
                budget.settle(estimate, 0)
                if result.status == "ok":
                    budget.settle(0, result.prompt_tokens + result.completion_tokens)
                future.set_result(result)
                deliver(index, result)

        async with openai.AsyncOpenAI(
            api_key=self._secret,
            base_url=self.config.base_url,
            max_retries=0,
            timeout=self.config.timeout_s,
        ) as api:
            tasks = [
                asyncio.ensure_future(worker(api))
                for _ in range(min(self.config.max_in_flight, max(1, len(requests))))
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failure = next((t.exception() for t in done if t.exception() is not None), None)
            if failure is not None:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise failure
        final = [r for r in results if r is not None]
        assert len(final) == len(requests)
        log.info(
            "labelling run: %d requests, %d calls, %d cache hits, %d retries, %d failed, "
            "%d tokens, stop=%s",
            len(requests),
            ledger.calls,
            ledger.cache_hits,
            ledger.retries,
            ledger.failed,
            ledger.total_tokens,
            state["stop"],
        )
        return RunReport(final, ledger, state["stop"])

    def _estimate(self, request: ChatRequest) -> int:
        return estimate_prompt_tokens(request.messages) + completion_allowance(
            request.params, self.config.default_max_tokens
        )

    def _stop_reason(self, state: dict, budget: TokenBudget, request: ChatRequest) -> Any:
        if state["stop"] is not None:
            return state["stop"]
        max_calls = self.config.max_calls
        if max_calls is not None and state["calls_started"] >= max_calls:
            return "limit"
        if not budget.try_reserve(self._estimate(request)):
            return "budget"
        return None

    def redact(self, text: str) -> str:
        """``text`` with the API key replaced by ``[redacted]``."""
        if self._secret and len(self._secret) >= 4:
            return text.replace(self._secret, "[redacted]")
        return text

    async def _call(
        self, api: Any, openai: Any, request: ChatRequest, key: str, ledger: UsageLedger
    ) -> ChatResult:
        attempts = 0
        while True:
            attempts += 1
            try:
                response = await api.chat.completions.create(
                    model=self.config.model,
                    messages=[dict(m) for m in request.messages],
                    **request.params,
                )
                reply = self._to_reply(response)
            except openai.APIStatusError as err:
                status = err.status_code
                message = f"HTTP {status}"
                if status in _FATAL_STATUS:
                    raise EndpointRefusedError(
                        f"{self.config.base_url or 'the OpenAI API'} refused the request with "
                        f"HTTP {status} (check the key in ${self.config.api_key_env}, access and "
                        f"model {self.config.model!r})"
                    ) from None
                retryable = status in (408, 409, 429) or status >= 500
                retry_after = _retry_after(err.response.headers)
            except (
                openai.APIConnectionError,
                openai.APIResponseValidationError,
                ValueError,
            ) as err:
                message, retryable, retry_after = type(err).__name__, True, None
            else:
                self.cache.put(key, reply)
                ledger.record_call(
                    reply.prompt_tokens, reply.completion_tokens, reply.usage_estimated
                )
                log.debug("call %s answered after %d attempt(s)", key[:12], attempts)
                return ChatResult(
                    request,
                    key,
                    "ok",
                    reply.content,
                    reply.prompt_tokens,
                    reply.completion_tokens,
                    attempts,
                )
            if not retryable or attempts > self.config.max_retries:
                ledger.failed += 1
                log.warning("call %s failed after %d attempt(s): %s", key[:12], attempts, message)
                return ChatResult(
                    request, key, "error", attempts=attempts, error=self.redact(message)
                )
            delay = self.config.backoff.delay(attempts - 1, self._rng, retry_after)
            ledger.retries += 1
            log.info("call %s: %s, retry %d in %.3fs", key[:12], message, attempts, delay)
            await self._sleep(delay)

    def _to_reply(self, response: Any) -> CachedReply:
        choices = getattr(response, "choices", None) or []
        content = ""
        finish_reason = None
        if choices:
            message = getattr(choices[0], "message", None)
            content = getattr(message, "content", None) or ""
            finish_reason = getattr(choices[0], "finish_reason", None)
        usage = getattr(response, "usage", None)
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        estimated = not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int)
        if estimated:
            prompt_tokens, completion_tokens = 0, estimate_tokens(content)
        return CachedReply(
            content=str(content),
            finish_reason=finish_reason,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            model=str(getattr(response, "model", "") or self.config.model),
            usage_estimated=estimated,
        )


def _from_cache(request: ChatRequest, key: str, reply: CachedReply) -> ChatResult:
    return ChatResult(
        request, key, "cached", reply.content, reply.prompt_tokens, reply.completion_tokens, 0
    )


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or numeric ``retry-after`` (dates are ignored)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    return None

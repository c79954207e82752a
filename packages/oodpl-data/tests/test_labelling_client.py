"""LabellingClient against the loopback server with the real openai client: concurrency,
retries with deterministic backoff, budget/limit stops and resume, accounting."""

from __future__ import annotations

import asyncio
import random

import pytest

from oodpl.data.labelling import (
    Backoff,
    ChatRequest,
    ClientConfig,
    EndpointRefusedError,
    JudgeItem,
    LabellingClient,
    PriceTable,
    ResponseCache,
    fail_first,
    judge_requests,
    judge_win_rate,
    serve_in_thread,
)
from oodpl.data.labelling.jsonl import read_jsonl
from oodpl.data.synthetic import SyntheticConfig, generate_benchmark

N_ITEMS = 100  # 200 judge calls


@pytest.fixture(scope="module")
def items() -> list[JudgeItem]:
    config = SyntheticConfig(n_finetune=0, n_pref_train=0, n_eval_reference=0, n_eval_pref=25)
    bench = generate_benchmark(config)
    return [
        JudgeItem(f"{p.domain}-{n}", p.prompt, p.chosen, p.rejected, p.domain)
        for n, p in enumerate(bench.records("eval_pref"))
    ][:N_ITEMS]


class RecordingSleep:
    """Injectable ``sleep`` that records delays and does not wait."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


def _config(server, **kwargs) -> ClientConfig:
    kwargs.setdefault("backoff", Backoff(initial_s=0.001, jitter=0.0))
    return ClientConfig(model="gold-judge", base_url=server.base_url, **kwargs)


def test_200_calls_with_16_in_flight(items, tmp_path):
    with serve_in_thread(delay_s=0.01) as server:
        client = LabellingClient(
            _config(server, max_in_flight=16), cache=ResponseCache(tmp_path / "cache.jsonl")
        )
        report = judge_win_rate(items, client, output_path=tmp_path / "out.jsonl")
        stats = server.stats.snapshot()
    assert stats["requests"] == stats["answered"] == 2 * N_ITEMS
    assert 2 <= stats["max_in_flight"] <= 16  # concurrent, and never above the cap
    assert report.ledger.calls == 2 * N_ITEMS and report.ledger.failed == 0
    assert sum(report.outcomes.values()) == N_ITEMS
    assert len(list(read_jsonl(tmp_path / "out.jsonl"))) == N_ITEMS
    assert len(ResponseCache(tmp_path / "cache.jsonl")) == 2 * N_ITEMS


def test_429_and_500_are_retried_with_deterministic_backoff():
    request = ChatRequest(({"role": "user", "content": "hello"},), {"max_tokens": 8})

    def fault_500_third(index, body):
        return "500" if index == 2 else None

    backoff = Backoff(initial_s=0.01, factor=2.0, max_s=1.0, jitter=0.5, seed=7)
    with serve_in_thread(
        lambda m: "fine\n1", faults=[fail_first(2, "429"), fault_500_third]
    ) as server:
        sleep = RecordingSleep()
        client = LabellingClient(_config(server, backoff=backoff), sleep=sleep)
        report = client.run([request])
        assert server.stats.requests == 4
        assert dict(server.stats.faults) == {"429": 2, "500": 1}
    result = report.results[0]
    assert result.status == "ok" and result.content == "fine\n1" and result.attempts == 4
    reference = random.Random(7)
    expected = [0.01 * 2**attempt * (1 - 0.5 * reference.random()) for attempt in range(3)]
    assert sleep.delays == pytest.approx(expected)
    assert report.ledger.retries == 3 and report.ledger.calls == 1


def test_bad_json_is_retried_and_exhausted_retries_are_not_cached(tmp_path):
    request = ChatRequest(({"role": "user", "content": "hello"},))
    cache_path = tmp_path / "cache.jsonl"
    with serve_in_thread(lambda m: "ok\n1", faults=[fail_first(1, "bad_json")]) as server:
        report = LabellingClient(_config(server), sleep=RecordingSleep()).run([request])
        assert report.results[0].status == "ok" and server.stats.requests == 2
    with serve_in_thread(lambda m: "ok\n1", faults=[fail_first(10, "503")]) as server:
        client = LabellingClient(
            _config(server, max_retries=2), cache=ResponseCache(cache_path), sleep=RecordingSleep()
        )
        report = client.run([request])
        result = report.results[0]
        assert result.status == "error" and result.attempts == 3 and result.error == "HTTP 503"
        assert server.stats.requests == 3 and report.ledger.failed == 1
    assert len(ResponseCache(cache_path)) == 0
    with serve_in_thread(lambda m: "fine now\n1", faults=[fail_first(1, "400")]) as server:
        report = LabellingClient(_config(server), sleep=RecordingSleep()).run([request])
        assert report.results[0].status == "error" and report.results[0].attempts == 1  # no retry
        assert LabellingClient(_config(server)).run([request]).results[0].status == "ok"


def test_refused_key_aborts_without_leaking_it(monkeypatch):
    monkeypatch.setenv("OODPL_WRONG_KEY", "sk-wrong-key-abcdef")
    request = ChatRequest(({"role": "user", "content": "hello"},))
    with serve_in_thread(expected_api_key="sk-right-key") as server:
        client = LabellingClient(_config(server, api_key_env="OODPL_WRONG_KEY"))
        with pytest.raises(EndpointRefusedError, match="OODPL_WRONG_KEY") as raised:
            client.run([request] * 3)
        assert "sk-wrong-key-abcdef" not in str(raised.value)
        assert server.stats.snapshot()["auth_failures"] >= 1


def test_limit_stop_then_resume_makes_only_missing_calls(items, tmp_path):
    cache_path, output = tmp_path / "cache.jsonl", tmp_path / "out.jsonl"
    with serve_in_thread() as server:
        limited = LabellingClient(_config(server, max_calls=51), cache=ResponseCache(cache_path))
        first = judge_win_rate(items, limited, output_path=output)
        assert first.stop_reason == "limit" and server.stats.requests == 51
        assert first.outcomes["not_run"] > 0
        written = len(list(read_jsonl(output)))
        client = LabellingClient(_config(server), cache=ResponseCache(cache_path))
        second = judge_win_rate(items, client, output_path=output)
        assert server.stats.requests == 2 * N_ITEMS  # 51 + the 149 missing, nothing twice
    assert second.stop_reason is None and second.resumed_items == written
    assert sum(second.outcomes[k] for k in ("win", "loss", "tie")) == N_ITEMS
    assert second.ledger.calls == 149
    assert second.ledger.cache_hits == 51 - 2 * written == 1
    assert len(list(read_jsonl(output))) == N_ITEMS


def test_token_budget_stops_before_exceeding(items, tmp_path):
    requests = judge_requests(items[:20])
    cache_path = tmp_path / "cache.jsonl"
    with serve_in_thread() as server:
        budget = 10_000
        client = LabellingClient(
            _config(server, token_budget=budget), cache=ResponseCache(cache_path)
        )
        report = client.run(requests)
        assert report.stop_reason == "budget"
        assert 0 < report.ledger.calls < len(requests)
        assert report.ledger.total_tokens <= budget
        assert report.count("budget") == len(requests) - report.ledger.calls
        made = server.stats.requests
        client = LabellingClient(_config(server), cache=ResponseCache(cache_path))
        again = client.run(requests)
        assert server.stats.requests - made == len(requests) - made
        assert again.count("cached") == made and again.stop_reason is None


def test_usage_and_cost_accounting_and_duplicates():
    requests = [
        ChatRequest(({"role": "user", "content": f"question {n % 3}"},), {"max_tokens": 4})
        for n in range(9)
    ]
    prices = PriceTable({"gold-judge": {"input_per_million": 3.0, "output_per_million": 15.0}})
    with serve_in_thread(lambda m: "answer text\n1", delay_s=0.02) as server:
        client = LabellingClient(_config(server, max_in_flight=4), prices=prices)
        report = client.run(requests)
        bodies = server.stats.bodies
    assert server.stats.requests == 3  # identical requests share one call (in flight or cached)
    assert report.count("ok") + report.count("cached") == 9
    ledger = report.ledger
    prompt_tokens = sum(-(-len(b["messages"][0]["content"]) // 4) + 4 for b in bodies)
    assert ledger.prompt_tokens == prompt_tokens
    assert ledger.completion_tokens == 3 * -(-len("answer text\n1") // 4)
    assert ledger.cost(prices) == pytest.approx(
        (ledger.prompt_tokens * 3.0 + ledger.completion_tokens * 15.0) / 1e6
    )
    assert ledger.to_dict(prices)["cost_usd"] == pytest.approx(ledger.cost(prices))


def test_run_inside_an_event_loop_is_refused():
    config = ClientConfig(model="m", base_url="http://127.0.0.1:9/v1")

    async def inside():
        LabellingClient(config).run([])

    with pytest.raises(RuntimeError, match="arun"):
        asyncio.run(inside())


def test_fully_cached_rerun_needs_no_key_and_no_endpoint(items, tmp_path, monkeypatch):
    cache_path = tmp_path / "cache.jsonl"
    requests = judge_requests(items[:5])
    with serve_in_thread() as server, ResponseCache(cache_path) as cache:
        first = LabellingClient(_config(server), cache=cache).run(requests)
    monkeypatch.delenv("OODPL_ABSENT_KEY", raising=False)
    offline = ClientConfig(
        model="gold-judge", base_url="https://example.invalid/v1", api_key_env="OODPL_ABSENT_KEY"
    )
    with ResponseCache(cache_path) as cache:
        again = LabellingClient(offline, cache=cache).run(requests)
    assert again.count("cached") == len(requests) and again.ledger.calls == 0
    assert [r.content for r in again.results] == [r.content for r in first.results]
    with ResponseCache(cache_path) as cache, pytest.raises(ValueError, match="OODPL_ABSENT_KEY"):
        LabellingClient(offline, cache=cache).run(judge_requests(items[5:6]))

"""A labelling run killed with SIGKILL resumes paying only the missing calls; the API key never
reaches a file or a log line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from oodpl.data.labelling import (
    Backoff,
    ClientConfig,
    GoldResponder,
    JudgeItem,
    LabellingClient,
    PriceTable,
    ResponseCache,
    dry_run,
    fail_first,
    fail_when,
    generate_csg_pairs,
    judge_requests,
    judge_win_rate,
    review_items_from_completions,
    serve_in_thread,
)
from oodpl.data.labelling.jsonl import read_jsonl
from oodpl.data.synthetic import SyntheticConfig, generate_benchmark

FAKE_KEY = "sk-oodpl-FAKE-7f3a9c1e5b2d4068-key"
KEY_ENV = "OODPL_TEST_JUDGE_KEY"
N_ITEMS, HOLD_AFTER = 100, 60

CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from oodpl.data.labelling import ClientConfig, JudgeItem, LabellingClient, ResponseCache
from oodpl.data.labelling import judge_win_rate
base_url, items_path, cache_path, output_path, key_env = sys.argv[1:6]
items = [JudgeItem(**row) for row in json.load(open(items_path))]
config = ClientConfig(model="gold-judge", base_url=base_url, api_key_env=key_env, max_in_flight=16)
client = LabellingClient(config, cache=ResponseCache(cache_path))
judge_win_rate(items, client, output_path=output_path)
print("child finished", file=sys.stderr)
"""


@pytest.fixture(scope="module")
def bench():
    config = SyntheticConfig(n_finetune=10, n_pref_train=0, n_eval_reference=0, n_eval_pref=25)
    return generate_benchmark(config)


@pytest.fixture(scope="module")
def items(bench) -> list[JudgeItem]:
    return [
        JudgeItem(f"{p.domain}-{n}", p.prompt, p.chosen, p.rejected, p.domain)
        for n, p in enumerate(bench.records("eval_pref"))
    ][:N_ITEMS]


def _line_count(path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_sigkill_midway_then_resume_pays_only_missing_calls(bench, items, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    items_path = tmp_path / "items.json"
    items_path.write_text(json.dumps([item.__dict__ for item in items]))
    cache_path, output = tmp_path / "cache.jsonl", tmp_path / "judgements.jsonl"
    stderr_path = tmp_path / "child_stderr.log"
    responder = GoldResponder(bench.gold)
    with serve_in_thread(responder, hold_after=HOLD_AFTER, expected_api_key=FAKE_KEY) as server:
        with stderr_path.open("wb") as stderr:
            paths = [str(items_path), str(cache_path), str(output)]
            child = subprocess.Popen(
                [sys.executable, "-c", CHILD, server.base_url, *paths, KEY_ENV],
                stderr=stderr,
                env={**os.environ, KEY_ENV: FAKE_KEY},
            )
            try:
                # The server answers the first 60 calls and holds the rest in flight.
                _wait_for(lambda: _line_count(cache_path) >= HOLD_AFTER, 120, "60 cached replies")
                _wait_for(lambda: server.stats.requests > HOLD_AFTER, 30, "held requests")
                assert child.poll() is None, "the child must still be running when killed"
                child.send_signal(signal.SIGKILL)
                assert child.wait(timeout=30) == -signal.SIGKILL
            finally:
                if child.poll() is None:
                    child.kill()
        server.release()
        assert server.stats.auth_failures == 0  # the key from the environment was sent
        cached_after_kill = len(ResponseCache(cache_path))
        assert cached_after_kill == HOLD_AFTER
        written_by_child = len(list(read_jsonl(output)))
        before = server.stats.requests

        config = ClientConfig(
            model="gold-judge", base_url=server.base_url, api_key_env=KEY_ENV, max_in_flight=16
        )
        with ResponseCache(cache_path) as cache:
            report = judge_win_rate(items, LabellingClient(config, cache=cache), output_path=output)
        new_requests = server.stats.requests - before
    print(f"child wrote {written_by_child} items; resume made {new_requests} new calls")
    assert new_requests == 2 * N_ITEMS - cached_after_kill  # only the missing calls
    assert report.ledger.calls == new_requests
    assert report.ledger.cache_hits == cached_after_kill - 2 * written_by_child
    assert report.resumed_items == written_by_child
    assert sum(report.outcomes[k] for k in ("win", "loss", "tie")) == N_ITEMS
    rows = [line.record for line in read_jsonl(output)]
    assert sorted(row["id"] for row in rows) == sorted(item.id for item in items)
    assert len(ResponseCache(cache_path)) == 2 * N_ITEMS
    child_log = stderr_path.read_bytes()
    assert b"DEBUG" in child_log  # the child really logged at DEBUG
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


def test_api_key_never_in_files_or_logs(bench, items, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "oodpl"):
        caplog.set_level(logging.DEBUG, logger=name)
    faults = [fail_first(2, "429"), fail_when("zebra", "garbage")]
    marked = [JudgeItem("z", items[0].question + " zebra", "good answer", "bad answer", "books")]
    prices = PriceTable({"gold-judge": {"input_per_million": 1.0, "output_per_million": 2.0}})
    cache_path = tmp_path / "cache.jsonl"
    with serve_in_thread(
        GoldResponder(bench.gold), faults=faults, expected_api_key=FAKE_KEY
    ) as server:
        config = ClientConfig(
            model="gold-judge",
            base_url=server.base_url,
            api_key_env=KEY_ENV,
            max_in_flight=4,
            backoff=Backoff(initial_s=0.001, jitter=0.0),
        )
        with ResponseCache(cache_path) as cache:
            client = LabellingClient(config, cache=cache, prices=prices)
            report = judge_win_rate(
                items[:10] + marked, client, output_path=tmp_path / "judgements.jsonl"
            )
            pairs = generate_csg_pairs(
                review_items_from_completions(bench.finetune["kitchen"]),
                client,
                output_path=tmp_path / "pairs.jsonl",
            )
            print(dry_run(judge_requests(items[:20]), model="gold-judge", cache=cache).format())
        (tmp_path / "usage.json").write_text(json.dumps(report.to_dict()))
        assert server.stats.auth_failures == 0 and server.stats.requests > 20
    assert report.ledger.retries == 2 and report.outcomes["unparseable"] == 1
    assert pairs.outcomes["written"] == 10
    records = caplog.records
    assert any(r.name.startswith("openai") and r.levelno == logging.DEBUG for r in records)
    assert any(r.name.startswith("oodpl") for r in records)
    captured = capsys.readouterr()
    texts = [caplog.text, captured.out, captured.err] + [r.getMessage() for r in records]
    texts += [repr(r.args) for r in records]
    assert not [t for t in texts if FAKE_KEY in t]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 4
    for path in files:
        assert FAKE_KEY.encode() not in path.read_bytes(), path

"""The loopback judge server: protocol, faults, gold-reward verdicts, win rate and CSG pairs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from oodpl.core.records import Preference
from oodpl.data.labelling import (
    Backoff,
    ClientConfig,
    GoldResponder,
    JudgeItem,
    JudgeServer,
    LabellingClient,
    PromptTemplates,
    ResponseCache,
    ReviewItem,
    fail_when,
    generate_csg_pairs,
    judge_win_rate,
    review_items_from_completions,
    serve_in_thread,
)
from oodpl.data.labelling.jsonl import read_jsonl
from oodpl.data.synthetic import SyntheticConfig, generate_benchmark

FAST = Backoff(initial_s=0.001, jitter=0.0)


@pytest.fixture(scope="module")
def bench():
    config = SyntheticConfig(n_finetune=40, n_pref_train=0, n_eval_reference=0, n_eval_pref=20)
    return generate_benchmark(config)


@pytest.fixture
def gold_server(bench):
    with serve_in_thread(GoldResponder(bench.gold)) as server:
        yield server


def _client(server, **kwargs) -> LabellingClient:
    cache = kwargs.pop("cache", None)
    config = ClientConfig(model="gold-judge", base_url=server.base_url, backoff=FAST, **kwargs)
    return LabellingClient(config, cache=cache)


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_protocol_routes_auth_and_loopback_only(bench):
    with serve_in_thread(GoldResponder(bench.gold), expected_api_key="sk-test-123") as server:
        url = server.base_url + "/chat/completions"
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hello"}]})
        status, _ = _post(url, body.encode(), {"Authorization": "Bearer wrong"})
        assert status == 401
        status, reply = _post(url, body.encode(), {"Authorization": "Bearer sk-test-123"})
        assert status == 200 and reply["object"] == "chat.completion"
        assert reply["usage"]["prompt_tokens"] > 0
        assert "No verdict" in reply["choices"][0]["message"]["content"]
        status, _ = _post(url, b"{broken", {"Authorization": "Bearer sk-test-123"})
        assert status == 400
        status, _ = _post(server.base_url + "/embeddings", body.encode())
        assert status == 404
        with urllib.request.urlopen(server.base_url + "/models", timeout=10) as response:
            assert json.loads(response.read())["data"][0]["id"] == "oodpl-gold-judge"
        assert server.stats.snapshot()["auth_failures"] == 1
        assert server.stats.requests == 1  # only the authorised chat completion counts
    with pytest.raises(ValueError, match="loopback"):
        JudgeServer(host="0.0.0.0")


def test_win_rate_through_the_server_is_the_gold_win_rate(bench, gold_server, tmp_path):
    items = []
    for domain in bench.domains:
        for n, pair in enumerate(bench.eval_pref[domain]):
            # candidate = the BT-rejected answer, reference = the BT-chosen one (label noise
            # makes the candidate better in some pairs).
            items.append(
                JudgeItem(f"{domain}-{n}", pair.prompt, pair.chosen, pair.rejected, domain)
            )
    output = tmp_path / "judgements.jsonl"
    report = judge_win_rate(items, _client(gold_server, max_in_flight=8), output_path=output)
    gold = bench.gold
    gaps = [
        gold(i.question, i.candidate, i.domain) - gold(i.question, i.reference, i.domain)
        for i in items
    ]
    expected = {
        "win": sum(g > 0 for g in gaps),
        "loss": sum(g < 0 for g in gaps),
        "tie": sum(g == 0 for g in gaps),
    }
    assert {k: report.outcomes[k] for k in expected} == expected
    assert expected["win"] > 0 and expected["loss"] > 0
    assert report.win_rate == pytest.approx(expected["win"] / len(items))
    assert report.unparseable_calls == 0 and report.ledger.calls == 2 * len(items)
    rows = [line.record for line in read_jsonl(output)]
    assert len(rows) == len(items) and {r["id"] for r in rows} == {i.id for i in items}
    assert all(r["outcome"] in ("win", "loss", "tie") for r in rows)
    # A re-run reads the finished items back and makes no call.
    before = gold_server.stats.requests
    again = judge_win_rate(items, _client(gold_server), output_path=output)
    assert gold_server.stats.requests == before
    assert again.resumed_items == len(items) and again.outcomes == report.outcomes


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("Answer 1.\nFirst is better.\n1", "tie"),  # position bias: always the first answer
        ("Answer 2.\nSecond is better.\n2", "tie"),  # position bias: always the second
    ],
)
def test_position_swap_turns_position_bias_into_ties(reply, outcome):
    items = [JudgeItem(str(n), f"q{n}", f"ref {n}", f"cand {n}") for n in range(6)]
    with serve_in_thread(lambda messages: reply) as server:
        report = judge_win_rate(items, _client(server))
    assert report.outcomes[outcome] == 6 and report.win_rate == 0.0
    assert report.win_rate_ties_half == 0.5


def test_content_based_judge_gives_agreeing_verdicts():
    def longer_answer_wins(messages):
        text = messages[-1]["content"]
        first = text.split("<answer_1>")[1].split("</answer_1>")[0]
        second = text.split("<answer_2>")[1].split("</answer_2>")[0]
        return f"Compared.\nLonger wins.\n{1 if len(first) > len(second) else 2}"

    items = [
        JudgeItem("a", "q", "short", "a much longer candidate"),
        JudgeItem("b", "q", "a much longer reference", "short"),
    ]
    with serve_in_thread(longer_answer_wins) as server:
        report = judge_win_rate(items, _client(server))
    assert report.outcomes["win"] == 1 and report.outcomes["loss"] == 1
    assert report.outcomes["tie"] == 0


def test_malformed_replies_are_counted_not_guessed(bench, tmp_path):
    faults = [
        fail_when("zebra", "garbage"),
        fail_when("yak", "empty"),
        fail_when("emu", "no_choices"),
    ]
    prompts = [p.prompt for p in bench.eval_pref["books"][:12]]
    markers = ["zebra", "yak", "emu"] + [""] * 9
    items = [
        JudgeItem(f"i{n}", f"{prompt} {marker}".strip(), "the plot was great", "the plot was dull")
        for n, (prompt, marker) in enumerate(zip(prompts, markers, strict=True))
    ]
    cache_path = tmp_path / "cache.jsonl"
    with serve_in_thread(GoldResponder(bench.gold), faults=faults) as server:
        report = judge_win_rate(items, _client(server, cache=ResponseCache(cache_path)))
        assert report.outcomes["unparseable"] == 3
        assert report.unparseable_calls == 6
        assert report.outcomes["loss"] == 9  # "great" beats "dull" for the reference
        assert dict(server.stats.faults) == {"garbage": 2, "empty": 2, "no_choices": 2}
        # The malformed replies were real replies: cached, so a re-run pays nothing and agrees.
        before = server.stats.requests
        again = judge_win_rate(items, _client(server, cache=ResponseCache(cache_path)))
        assert server.stats.requests == before
        assert again.outcomes == report.outcomes and again.unparseable_calls == 6


def test_gold_responder_verdicts(bench):
    responder = GoldResponder(bench.gold)
    templates = PromptTemplates.load()
    prompt = "i bought this laptop yesterday and"
    good, bad = "the battery was fast and light", "the battery was laggy and heavy"
    assert responder.reply(templates.judge_messages(prompt, good, bad)).endswith("\n1")
    assert responder.reply(templates.judge_messages(prompt, bad, good)).endswith("\n2")
    # In a book the same words mean the opposite for "light": domain drift reaches the judge.
    book = "i read this novel yesterday and"
    assert bench.gold(book, "it was light") < bench.gold(prompt, "it was light")
    # A stochastic judge is still deterministic per request.
    noisy = GoldResponder(bench.gold, verdict_temperature=1.0)
    messages = templates.judge_messages(prompt, good, bad)
    assert len({noisy.reply(messages) for _ in range(5)}) == 1


def test_csg_pairs_through_the_server(bench, gold_server, tmp_path):
    completions = [c for d in bench.domains for c in bench.finetune[d][:10]]
    items = review_items_from_completions(completions)
    output = tmp_path / "csg_pairs.jsonl"
    report = generate_csg_pairs(items, _client(gold_server, max_in_flight=4), output_path=output)
    assert report.outcomes["written"] == len(items)
    assert report.outcomes["unparseable"] == report.outcomes["inconsistent"] == 0
    rows = [line.record for line in read_jsonl(output)]
    assert len(rows) == len(items)
    for row in rows:
        assert set(row) == {"prompt", "chosen", "rejected", "domain", "source", "meta"}
        pair = Preference(**row)
        assert pair.source == "csg"
        gold = bench.gold
        assert gold(pair.prompt, pair.chosen, pair.domain) > gold(
            pair.prompt, pair.rejected, pair.domain
        )
    before = gold_server.stats.requests
    again = generate_csg_pairs(items, _client(gold_server), output_path=output)
    assert gold_server.stats.requests == before and again.resumed_items == len(items)
    assert len(list(read_jsonl(output))) == len(items)


def test_csg_inconsistent_and_unparseable_replies_are_dropped(tmp_path):
    wrong_direction = (
        "PREFIX: i read this novel\nREVIEW 1: i read this novel and loved it\n"
        "REVIEW 2: i read this novel and liked it\nMORE POSITIVE: 2"
    )
    items = [
        ReviewItem(f"r{n}", "i read this novel and loved it", "books", "positive") for n in range(3)
    ]
    with serve_in_thread(lambda messages: wrong_direction) as server:
        report = generate_csg_pairs(items, _client(server), output_path=tmp_path / "a.jsonl")
        kept = generate_csg_pairs(
            items, _client(server), output_path=tmp_path / "b.jsonl", keep_inconsistent=True
        )
    assert report.outcomes["inconsistent"] == 3 and report.outcomes["written"] == 0
    assert kept.outcomes["written"] == 3
    assert [r.record["chosen"] for r in read_jsonl(tmp_path / "b.jsonl")] == ["and liked it"] * 3
    with serve_in_thread(lambda messages: "Sure! Here are two reviews.") as server:
        report = generate_csg_pairs(items, _client(server), output_path=tmp_path / "c.jsonl")
    assert report.outcomes["unparseable"] == 3 and sum(report.reasons.values()) == 3

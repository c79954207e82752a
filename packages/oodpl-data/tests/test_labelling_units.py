"""Labelling parts without a server: parsing, verdicts, templates, cache, budget, dry run."""

from __future__ import annotations

import fcntl
import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oodpl.data.labelling import (
    Backoff,
    ChatRequest,
    ClientConfig,
    PriceTable,
    PromptTemplates,
    ResponseCache,
    TokenBudget,
    cache_key,
    combine_verdicts,
    dry_run,
    estimate_prompt_tokens,
    judge_requests,
    packaged_template_dir,
    parse_judge_reply,
    parse_pair_reply,
)
from oodpl.data.labelling.cache import CachedReply
from oodpl.data.labelling.endpoint import LOOPBACK_PLACEHOLDER_KEY, resolve_api_key
from oodpl.data.labelling.jsonl import AppendOnlyJsonl, FileInUseError, read_jsonl
from oodpl.data.labelling.judge import JudgeItem

# -- strict parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "choice"),
    [
        ("Answer 2 is better.\nIt is more specific.\n2", 2),
        ("one line\n  1  \n\n", 1),
        ("1", 1),
        ("Answer 1 is better.\nBecause.\n2.", None),
        ("Answer 1 is better.\nBecause.\n**1**", None),
        ("Answer 1 is better.\nBecause.\nAnswer 1", None),
        ("They are equal.\ntie", None),
        ("1\nActually I changed my mind.", None),
        ("", None),
        ("   \n  ", None),
        (None, None),
    ],
)
def test_parse_judge_reply_is_strict(reply, choice):
    verdict = parse_judge_reply(reply)
    assert verdict.choice == choice
    assert (verdict.reason is None) == (choice is not None)


_GOOD_PAIR = (
    "PREFIX: i read this novel\n"
    "REVIEW 1: i read this novel and the plot was gripping\n"
    "REVIEW 2: i read this novel and the plot was dull\n"
    "MORE POSITIVE: 1"
)


def test_parse_pair_reply_accepts_the_format():
    parsed = parse_pair_reply(_GOOD_PAIR)
    assert parsed.parsed
    reply = parsed.reply
    assert reply.prefix == "i read this novel" and reply.more_positive == 1
    assert reply.continuation_1 == "and the plot was gripping"
    assert reply.continuation_2 == "and the plot was dull"
    spaced = parse_pair_reply("\n\n" + _GOOD_PAIR.replace("\n", "\n\n") + "\n")
    assert spaced.reply == reply


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda t: t.replace("MORE POSITIVE: 1", "MORE POSITIVE: first"), "MORE POSITIVE"),
        (lambda t: t.replace("MORE POSITIVE: 1", "MORE POSITIVE: 1."), "MORE POSITIVE"),
        (lambda t: t.replace("REVIEW 1:", "Review 1:"), "line 2"),
        (lambda t: t + "\nThanks!", "expected 4"),
        (lambda t: t.replace("REVIEW 2: i read this novel and", "REVIEW 2: a novel and"), "prefix"),
        (
            lambda t: t.replace("REVIEW 2: i read this novel and", "REVIEW 2: i read this novels"),
            "prefix",
        ),
        (lambda t: t.replace("the plot was dull", "the plot was gripping"), "identical"),
        (lambda t: t.replace("PREFIX: i read this novel", "PREFIX:"), "empty"),
        (lambda t: t.split("\n", 1)[1], "expected 4"),
    ],
)
def test_parse_pair_reply_rejects_with_a_reason(mutate, reason):
    parsed = parse_pair_reply(mutate(_GOOD_PAIR))
    assert not parsed.parsed
    assert reason in parsed.reason


def test_combine_verdicts_truth_table():
    # reference_first: answer 1 = reference; candidate_first: answer 1 = candidate.
    assert combine_verdicts(2, 1) == "win"  # both pick the candidate
    assert combine_verdicts(1, 2) == "loss"  # both pick the reference
    assert combine_verdicts(1, 1) == "tie"  # always the first position
    assert combine_verdicts(2, 2) == "tie"  # always the second position
    for other in (1, 2, None):
        assert combine_verdicts(None, other) == "unparseable"
        assert combine_verdicts(other, None) == "unparseable"


@given(st.sampled_from([1, 2]), st.sampled_from([1, 2]))
def test_combine_verdicts_is_symmetric_under_swapping_roles(a, b):
    # Swapping which answer is called "reference" turns a win into a loss and keeps ties.
    flipped = {"win": "loss", "loss": "win", "tie": "tie"}
    assert combine_verdicts(b, a) == flipped[combine_verdicts(a, b)]


# -- templates ---------------------------------------------------------------------------------


def test_packaged_templates_and_requests():
    assert sorted(p.name for p in Path(packaged_template_dir()).glob("*.txt")) == [
        "judge_system.txt",
        "judge_user.txt",
        "pairs_system.txt",
        "pairs_user.txt",
    ]
    templates = PromptTemplates.load()
    item = JudgeItem("a", "Q? costs $5 {x}", "reference text", "candidate text")
    first, second = judge_requests([item], templates)
    assert first.messages[1]["content"].index("reference text") < first.messages[1][
        "content"
    ].index("candidate text")
    assert second.messages[1]["content"].index("candidate text") < second.messages[1][
        "content"
    ].index("reference text")
    assert "Q? costs $5 {x}" in first.messages[1]["content"]
    assert first.params["temperature"] == 0.0


def test_template_dir_overrides_and_validation(tmp_path):
    (tmp_path / "judge_user.txt").write_text(
        "MY WORDING $$1 <question>$question</question> <answer_1>$answer_1</answer_1> "
        "<answer_2>$answer_2</answer_2>"
    )
    templates = PromptTemplates.load(tmp_path)
    assert templates.origins["judge_user"] == str(tmp_path / "judge_user.txt")
    assert templates.origins["pairs_user"] == "packaged:pairs_user.txt"
    text = templates.render("judge_user", question="q", answer_1="a", answer_2="b")
    assert text.startswith("MY WORDING $1 <question>q</question>")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "judge_user.txt").write_text("$question $answer_1 only")
    with pytest.raises(ValueError, match=r"judge_user.txt lacks \['\$answer_2'\]"):
        PromptTemplates.load(bad)
    (bad / "judge_user.txt").write_text("$question $answer_1 $answer_2 $answer_3")
    with pytest.raises(ValueError, match="answer_3"):
        PromptTemplates.load(bad)
    with pytest.raises(ValueError, match="not a directory"):
        PromptTemplates.load(tmp_path / "missing")


# -- cache, JSONL, keys ------------------------------------------------------------------------


def test_cache_key_covers_model_messages_and_params():
    messages = [{"role": "user", "content": "hi"}]
    base = cache_key("m", messages, {"temperature": 0.0, "max_tokens": 5})
    assert base == cache_key("m", messages, {"max_tokens": 5, "temperature": 0.0})
    assert base != cache_key("n", messages, {"temperature": 0.0, "max_tokens": 5})
    assert base != cache_key("m", [{"role": "user", "content": "hi!"}], {"temperature": 0.0})
    assert base != cache_key("m", messages, {"temperature": 0.5, "max_tokens": 5})
    assert len(base) == 64


def _reply(text: str) -> CachedReply:
    return CachedReply(text, "stop", 10, 2, "m")


def test_cache_persists_and_survives_a_torn_tail(tmp_path):
    path = tmp_path / "cache.jsonl"
    with ResponseCache(path) as cache:
        cache.put("k1", _reply("one"))
        cache.put("k2", _reply("two"))
        cache.put("k1", _reply("ignored: first answer wins"))
    with path.open("ab") as handle:  # a writer killed mid-line
        handle.write(b'{"v": 1, "key": "k3", "reply": {"content": "thr')
    with ResponseCache(path) as cache:
        assert len(cache) == 2 and cache.get("k1").content == "one" and "k3" not in cache
        cache.put("k3", _reply("three"))
    lines = list(read_jsonl(path))
    assert [line.record["key"] for line in lines] == ["k1", "k2", "k3"]
    assert ResponseCache(path).get("k3").content == "three"


def test_jsonl_lock_and_strict_reading(tmp_path):
    path = tmp_path / "out.jsonl"
    with path.open("ab") as other:  # a lock held through another open file = another process
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(FileInUseError, match="another running process"):
            AppendOnlyJsonl(path)
    first, second = AppendOnlyJsonl(path), AppendOnlyJsonl(path)  # one process: shared handle
    first.append({"a": 1})
    second.append({"a": 2})
    first.close()
    second.append({"a": 3})
    second.close()
    with pytest.raises(ValueError, match="closed"):
        second.append({"a": 4})
    assert [line.record["a"] for line in read_jsonl(path)] == [1, 2, 3]
    with path.open("ab") as other:  # every writer closed: the lock is free again
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        list(read_jsonl(path))
    assert [line.record["a"] for line in read_jsonl(path, strict=False)] == [1, 2]


# -- keys, backoff, budget, dry run ------------------------------------------------------------


def test_api_key_only_from_the_environment(monkeypatch):
    monkeypatch.delenv("OODPL_UNSET_KEY", raising=False)
    remote = ClientConfig(
        model="m", base_url="https://example.invalid/v1", api_key_env="OODPL_UNSET_KEY"
    )
    with pytest.raises(ValueError, match="OODPL_UNSET_KEY is not set"):
        resolve_api_key(remote)
    local = ClientConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="OODPL_UNSET_KEY")
    assert resolve_api_key(local) == LOOPBACK_PLACEHOLDER_KEY
    monkeypatch.setenv("OODPL_UNSET_KEY", "sk-from-env")
    assert resolve_api_key(remote) == "sk-from-env"
    assert "sk-from-env" not in repr(remote)


def test_backoff_is_deterministic():
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=3.0, jitter=0.5, seed=3)
    rng, reference = random.Random(3), random.Random(3)
    delays = [backoff.delay(attempt, rng) for attempt in range(5)]
    expected = [min(0.5 * 2**a, 3.0) * (1 - 0.5 * reference.random()) for a in range(5)]
    assert delays == pytest.approx(expected)
    flat = Backoff(initial_s=0.1, jitter=0.0)
    assert [flat.delay(a, rng) for a in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    assert flat.delay(0, rng, retry_after=2.0) == 2.0  # the server's Retry-After wins when longer
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=2.0)


def test_token_budget_never_overspends():
    budget = TokenBudget(100)
    assert budget.try_reserve(60)
    assert not budget.try_reserve(41)
    budget.settle(60, 30)
    assert budget.try_reserve(70) and not budget.try_reserve(1)
    with pytest.raises(ValueError, match="token budget"):
        TokenBudget(0)


def test_dry_run_counts_calls_tokens_and_cost():
    items = [JudgeItem(f"i{n}", f"question {n}", "ref " * n + "x", "cand") for n in range(5)]
    requests = judge_requests(items, params={"temperature": 0.0, "max_tokens": 100})
    requests.append(requests[0])  # a duplicate costs nothing extra
    cache = ResponseCache(None)
    cache.put(requests[1].key("m"), _reply("cached"))
    prices = PriceTable({"m": {"input_per_million": 2.0, "output_per_million": 8.0}})
    report = dry_run(requests, model="m", cache=cache, prices=prices)
    assert (report.n_requests, report.n_unique, report.n_cached, report.n_to_call) == (11, 10, 1, 9)
    to_call = [r for r in requests[:10] if r is not requests[1]]
    expected_prompt = sum(
        sum(math.ceil(len(m["content"]) / 4) + 4 for m in r.messages) for r in to_call
    )
    assert report.est_prompt_tokens == expected_prompt
    assert report.est_prompt_tokens == sum(estimate_prompt_tokens(r.messages) for r in to_call)
    assert report.est_completion_tokens == 9 * 100
    assert report.est_cost_usd == pytest.approx((expected_prompt * 2.0 + 900 * 8.0) / 1e6)
    text = report.format()
    assert "calls to make:   9" in text and str(expected_prompt) in text
    assert dry_run(requests, model="other").est_cost_usd is None


def test_request_and_config_validation(tmp_path):
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        ChatRequest(({"role": "robot", "content": "x"},))
    with pytest.raises(ValueError, match="model"):
        ChatRequest(({"role": "user", "content": "x"},), {"model": "m"})
    with pytest.raises(ValueError, match="max_in_flight"):
        ClientConfig(model="m", max_in_flight=0)
    with pytest.raises(ValueError, match="token budget"):
        ClientConfig(model="m", token_budget=-5)
    bad = tmp_path / "prices.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"prices.json: invalid JSON"):
        PriceTable.from_file(bad)
    bad.write_text('{"m": {"input_per_million": -1, "output_per_million": 1}}')
    with pytest.raises(ValueError, match="input_per_million"):
        PriceTable.from_file(bad)


_LINE = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda s: "\n" not in s and "\r" not in s
)


@given(st.lists(_LINE, max_size=4), st.sampled_from(["1", "2"]), _LINE)
def test_judge_parser_reads_exactly_the_final_line(body, digit, tail):
    lines = [line for line in body if line.splitlines() == [line] or not line]
    text = "\n".join([*lines, f"  {digit}  "])
    assert parse_judge_reply(text).choice == int(digit)
    # Anything else on the last non-empty line makes the reply unparseable.
    if tail.strip() and tail.strip() not in ("1", "2") and tail.splitlines() == [tail]:
        assert parse_judge_reply(f"{text}\n{tail}").choice is None

"""``oodpl label pairs|judge`` through the real CLI against the loopback gold-judge server
(``oodpl.data.labelling.server``), which answers with the synthetic benchmark's gold reward.

What is checked: 50 synthetic pairs judged with position swapping give exactly the outcomes the
gold reward implies; a run killed with SIGKILL and re-run pays only for the calls it never got
answers to (server request count); --dry-run makes no call; --budget stops before the token
budget is exceeded; the API key (read from the variable --api-key-env names) never appears in
any output file or in stdout/stderr; bad input is one ``error:`` line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from oodpl.cli.main import oodpl
from oodpl.data import registry
from oodpl.data.labelling import (
    JudgeItem,
    estimate_prompt_tokens,
    judge_requests,
    serve_in_thread,
)
from oodpl.data.synthetic import SyntheticConfig

KEY_ENV = "OODPL_TEST_LABEL_KEY"
FAKE_KEY = "sk-oodpl-fake-3f9c2a7e5b1d4c8e"
MODEL = "oodpl-gold-judge"
# 4 domains × 13 eval pairs = 52 pairs; the first 50 are judged
JUDGE_SOURCE = ["--source", "synthetic", "--split", "eval_pref", "--option", "n_eval_pref=13"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(oodpl, list(args), prog_name="oodpl")


def judge_args(server, output: Path, *extra: str) -> list[str]:
    return ["label", "judge", *JUDGE_SOURCE, "--limit", "50", "--model", MODEL,
            "--base-url", server.base_url, "--api-key-env", KEY_ENV, "--output", str(output),
            *extra]  # fmt: skip


def summary_of(result: Result) -> dict:
    assert result.exit_code == 0, (result.output, result.stderr)
    return json.loads(result.stdout)


def lines_of(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def assert_key_nowhere(root: Path, *texts: str) -> None:
    for text in texts:
        assert FAKE_KEY not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), path


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    return FAKE_KEY


@pytest.fixture
def server(key: str):
    with serve_in_thread(expected_api_key=key, delay_s=0.01) as running:
        yield running


def gold_outcomes(n: int) -> list[str]:
    """What the gold judge must decide for the first ``n`` pairs (candidate = rejected), from the
    gold reward itself: a strictly better candidate wins both orders, a worse one loses both,
    a gold tie is won by position, so swapping makes it a tie."""
    gold = SyntheticConfig().gold_reward()
    pairs = registry.load("synthetic", split="eval_pref", n_eval_pref=13)[:n]
    outcomes = []
    for pair in pairs:
        chosen = gold(pair.prompt, pair.chosen, pair.domain)
        rejected = gold(pair.prompt, pair.rejected, pair.domain)
        outcomes.append("win" if rejected > chosen else "loss" if rejected < chosen else "tie")
    return outcomes


# ------------------------------------------------------------------------------ judging
def test_judge_50_synthetic_pairs_with_position_swap(server, tmp_path: Path) -> None:
    output = tmp_path / "judge.jsonl"
    result = invoke(*judge_args(server, output, "--concurrency", "3", "--json"))
    summary = summary_of(result)
    expected = gold_outcomes(50)
    assert server.stats.requests == 100 and server.stats.auth_failures == 0
    assert 2 <= server.stats.max_in_flight <= 3
    rows = lines_of(output)
    assert len(rows) == 50 and len({row["id"] for row in rows}) == 50
    ids = [f"{d}-{i}" for d in ("books", "dvd", "electronics", "kitchen") for i in range(13)][:50]
    assert [row["outcome"] for row in sorted(rows, key=lambda r: ids.index(r["id"]))] == expected
    for name in ("win", "loss", "tie"):
        assert summary[name] == expected.count(name)
    assert summary["win_rate"] == pytest.approx(expected.count("win") / 50)
    assert summary["unparseable"] == summary["unparseable_calls"] == 0
    assert (summary["calls_made"], summary["cached"]) == (100, 0)
    assert summary["total_tokens"] == summary["prompt_tokens"] + summary["completion_tokens"] > 0
    # the same run again is free: every item is already in the output
    again = summary_of(invoke(*judge_args(server, output, "--json")))
    assert server.stats.requests == 100
    assert (again["resumed_items"], again["calls_made"], again["win"]) == (50, 0, summary["win"])
    # without the output file the cache still answers everything
    output.unlink()
    cached = summary_of(invoke(*judge_args(server, output, "--json")))
    assert server.stats.requests == 100
    assert (cached["calls_made"], cached["cached"], cached["loss"]) == (0, 100, summary["loss"])
    table = invoke(*judge_args(server, output))
    assert "win rate" in table.output and "calls made" in table.output
    assert_key_nowhere(tmp_path, result.output, result.stderr, table.output, table.stderr)


def test_items_file_identical_answers_tie_and_bad_lines_are_named(server, tmp_path) -> None:
    pairs = registry.load("synthetic", split="eval_pref", n_eval_pref=2, domains=["dvd"])
    items = [
        {"id": "same", "question": pairs[0].prompt, "reference": pairs[0].chosen,
         "candidate": pairs[0].chosen, "domain": "dvd"},
        {"prompt": pairs[1].prompt, "reference": pairs[1].chosen, "candidate": pairs[1].rejected},
    ]  # fmt: skip
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    output = tmp_path / "out.jsonl"
    args = ["label", "judge", "--items", str(path), "--model", MODEL, "--base-url",
            server.base_url, "--api-key-env", KEY_ENV, "--output", str(output),
            "--json"]  # fmt: skip
    summary = summary_of(invoke(*args))
    rows = {row["id"]: row for row in lines_of(output)}
    assert set(rows) == {"same", "item-2"}
    assert rows["same"]["outcome"] == "tie" and rows["same"]["verdicts"] == [1, 1]
    # "same" asks one question twice (swapping identical answers): identical requests, one call
    assert summary["tie"] >= 1 and summary["calls_made"] == 3 and server.stats.requests == 3
    path.write_text(json.dumps(items[0]) + "\n" + json.dumps({"prompt": "q"}) + "\n")
    line = one_line_error(invoke(*args))
    assert f"{path}: line 2: field 'reference'" in line


# ---------------------------------------------------------------------- kill and re-run
def test_a_killed_run_resumes_and_pays_only_for_unanswered_calls(key, tmp_path: Path) -> None:
    output, cache = tmp_path / "judge.jsonl", tmp_path / "judge.jsonl.cache.jsonl"
    env = {**os.environ, KEY_ENV: key, "HF_HUB_OFFLINE": "1", "OODPL_DEBUG": "0"}
    with serve_in_thread(expected_api_key=key, hold_after=21) as server:
        command = [sys.executable, "-m", "oodpl.cli.main",
                   *judge_args(server, output, "--concurrency", "4")]  # fmt: skip
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(lines_of(cache)) < 21:  # every answered call is in the cache before moving on
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the first run never got 21 answers"
            time.sleep(0.05)
        while server.stats.requests < 22 and time.monotonic() < deadline:
            time.sleep(0.02)  # the next calls are held by the server: the run is mid-flight
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        written, answered = len(lines_of(output)), len(lines_of(cache))
        assert answered == 21 and 0 < written <= 10
        server.release()
        before = server.stats.requests
        summary = summary_of(invoke(*judge_args(server, output, "--json")))
        assert server.stats.requests - before == 100 - answered == summary["calls_made"]
        assert summary["cached"] == answered - 2 * written > 0
        assert summary["resumed_items"] == written
    rows = lines_of(output)
    assert len(rows) == 50 and len({row["id"] for row in rows}) == 50
    assert sorted(row["outcome"] for row in rows) == sorted(gold_outcomes(50))
    assert_key_nowhere(tmp_path, out.decode(), err.decode())


# -------------------------------------------------------------------- dry run and budget
def test_dry_run_makes_no_call_and_counts_what_is_cached(server, tmp_path: Path) -> None:
    output = tmp_path / "judge.jsonl"
    dry = summary_of(invoke(*judge_args(server, output, "--dry-run", "--json")))
    assert server.stats.requests == 0 and not list(tmp_path.iterdir())
    assert (dry["n_requests"], dry["n_to_call"], dry["calls_made"]) == (100, 100, 0)
    assert dry["est_completion_tokens"] == 100 * 256  # each judge call's max_tokens
    partial = summary_of(invoke(*judge_args(server, output, "--limit", "10", "--json")))
    assert server.stats.requests == 20
    dry = summary_of(invoke(*judge_args(server, output, "--dry-run", "--json")))
    assert server.stats.requests == 20
    assert (dry["resumed_items"], dry["n_requests"], dry["n_to_call"]) == (10, 80, 80)
    full = summary_of(invoke(*judge_args(server, output, "--json")))
    # the estimate uses the same chars/4 rule the server reports usage with
    assert dry["est_prompt_tokens"] == full["prompt_tokens"]
    assert partial["prompt_tokens"] + full["prompt_tokens"] > dry["est_prompt_tokens"]
    pairs_dry = invoke("label", "pairs", "synthetic", "--option", "n_finetune=2", "--model",
                       MODEL, "--output", str(tmp_path / "p.jsonl"), "--dry-run")  # fmt: skip
    assert pairs_dry.exit_code == 0 and "calls made" in pairs_dry.output
    assert server.stats.requests == 100 and not (tmp_path / "p.jsonl").exists()


def test_budget_stops_before_exceeding_it_and_a_rerun_finishes(server, tmp_path: Path) -> None:
    output, budget = tmp_path / "judge.jsonl", 3000
    args = judge_args(server, output, "--concurrency", "1", "--json")
    result = invoke(*args, "--budget", str(budget))
    first = summary_of(result)
    assert first["stopped_by"] == "budget"
    assert 0 < first["calls_made"] == server.stats.requests < 100
    assert first["total_tokens"] <= budget
    # one call at a time: the next request (chars/4 prompt estimate + its 256-token allowance)
    # was refused because it would not have fitted
    pairs = registry.load("synthetic", split="eval_pref", n_eval_pref=13)[:50]
    items = [
        JudgeItem(f"{i}", p.prompt, p.chosen, p.rejected, p.domain) for i, p in enumerate(pairs)
    ]
    following = judge_requests(items)[first["calls_made"]]
    assert first["total_tokens"] + estimate_prompt_tokens(following.messages) + 256 > budget
    assert first["not_run"] > 0 and len(lines_of(output)) == first["calls_made"] // 2
    assert "stopped before exceeding the token budget of 3000" in result.stderr
    rest = summary_of(invoke(*args))
    assert rest["stopped_by"] is None and rest["calls_made"] == 100 - first["calls_made"]
    assert server.stats.requests == 100 and len(lines_of(output)) == 50


# --------------------------------------------------------------------------------- pairs
def test_pairs_from_synthetic_reviews_load_as_csg_pairs(server, tmp_path: Path) -> None:
    output = tmp_path / "pairs.jsonl"
    args = ["label", "pairs", "synthetic", "--option", "n_finetune=4", "--domains", "books,dvd",
            "--model", MODEL, "--base-url", server.base_url, "--api-key-env", KEY_ENV,
            "--output", str(output), "--json"]  # fmt: skip
    summary = summary_of(invoke(*args))
    assert summary["items"] == 8 and server.stats.requests == 8
    assert summary["written"] + summary["inconsistent"] + summary["unparseable"] == 8
    pairs = registry.load("csg-pairs", output)
    assert len(pairs) == summary["written"] > 0
    gold = SyntheticConfig().gold_reward()
    for pair in pairs:  # the more positive review (by the gold reward) is the chosen one
        assert gold(pair.prompt, pair.chosen, pair.domain) >= gold(
            pair.prompt, pair.rejected, pair.domain
        )
    again = summary_of(invoke(*args))
    assert server.stats.requests == 8 and again["resumed_items"] == summary["written"]
    assert_key_nowhere(tmp_path)


def test_pairs_from_amazon_reviews_keep_the_file_sentiment(server, tmp_path: Path) -> None:
    root = tmp_path / "sorted_data_acl" / "books"
    root.mkdir(parents=True)
    texts = {
        "positive": "i read this novel last week and the plot was gripping and wonderful",
        "negative": "i read this memoir last month and the prose was dull and tedious",
    }
    for label, text in texts.items():
        block = (f"<review>\n<rating>\n{'5.0' if label == 'positive' else '1.0'}\n</rating>\n"
                 f"<review_text>\n{text}\n</review_text>\n</review>\n")  # fmt: skip
        (root / f"{label}.review").write_text(block, encoding="latin-1")
    output = tmp_path / "pairs.jsonl"
    summary = summary_of(invoke("label", "pairs", "amazon", "--path", str(root.parent),
                                "--model", MODEL, "--base-url", server.base_url, "--api-key-env",
                                KEY_ENV, "--output", str(output), "--json"))  # fmt: skip
    assert summary["items"] == 2 and summary["written"] >= 1
    sentiments = {row["meta"]["input_id"]: row["meta"]["sentiment"] for row in lines_of(output)}
    assert set(sentiments.values()) <= {"positive", "negative"}
    assert all(row["source"] == f"csg-llm:{MODEL}" for row in lines_of(output))


# ----------------------------------------------------------------------------- bad input
def one_line_error(result: Result, *fragments: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.output, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_the_key_is_never_accepted_as_a_value_nor_echoed(tmp_path: Path) -> None:
    result = invoke("label", "judge", *JUDGE_SOURCE, "--model", MODEL, "--output",
                    str(tmp_path / "o.jsonl"), "--api-key-env", FAKE_KEY)  # fmt: skip
    line = one_line_error(result, "--api-key-env takes the NAME of an environment variable")
    assert FAKE_KEY not in result.output + result.stderr and FAKE_KEY not in line
    assert not list(tmp_path.iterdir())


def test_an_unset_key_variable_fails_before_any_file_is_written(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    result = invoke("label", "judge", *JUDGE_SOURCE, "--limit", "2", "--model", MODEL,
                    "--base-url", "https://api.example.invalid/v1", "--api-key-env", KEY_ENV,
                    "--output", str(tmp_path / "o.jsonl"))  # fmt: skip
    one_line_error(result, f"environment variable {KEY_ENV} is not set")
    assert not list(tmp_path.iterdir())


def test_a_wrong_key_is_refused_in_one_line_without_echoing_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-oodpl-wrong-0000000000")
    result = invoke(*judge_args(server, tmp_path / "o.jsonl"))
    one_line_error(result, "HTTP 401", KEY_ENV, code=1)
    assert "sk-oodpl-wrong" not in result.stderr and server.stats.auth_failures >= 1


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["judge", "--model", MODEL, "--output", "o.jsonl"], ["exactly one of --items"]),
        (["judge", "--items", "missing.jsonl", "--model", MODEL, "--output", "o.jsonl"],
         ["--items file does not exist"]),
        (["judge", "--source", "shp", "--path", "/no/such/dir", "--model", MODEL, "--output",
          "o.jsonl"], ["--path does not exist: /no/such/dir"]),
        (["pairs", "imdb", "--model", MODEL, "--output", "o.jsonl"], ["unknown data source"]),
        (["pairs", "synthetic", "--split", "eval_pref", "--model", MODEL, "--output", "o.jsonl"],
         ["needs reviews"]),
        (["pairs", "synthetic", "--model", MODEL, "--output", "o.jsonl", "--templates", "nodir"],
         ["--templates directory does not exist"]),
        (["judge", "--source", "synthetic", "--output", "o.jsonl"], ["Missing option '--model'"]),
        (["judge", "--source", "synthetic", "--model", MODEL, "--output", "o.jsonl", "--budget",
          "0"], ["--budget"]),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_status_2(args, fragments, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke("label", *args), *fragments)
    assert not list(tmp_path.iterdir())

"""``oodpl data list|inspect|split`` through the real CLI, on the synthetic source and on small
files in the upstream layouts (Amazon reviews, SHP, Summarize, CSG pairs) written per test.

Counts are checked against ``oodpl.data.registry.load`` and ``oodpl.data.splits`` called
directly; bad input must give one ``error:`` line, exit status 2 and no traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from oodpl.cli.main import oodpl
from oodpl.data import registry
from oodpl.data.splits import apply_fold, leave_one_domain_out, per_domain_splits

SMALL = ["--option", "n_finetune=6", "--option", "n_pref_train=5", "--option",
         "n_eval_reference=3", "--option", "n_eval_pref=4"]  # fmt: skip
SMALL_CONFIG = {"n_finetune": 6, "n_pref_train": 5, "n_eval_reference": 3, "n_eval_pref": 4}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(oodpl, list(args), prog_name="oodpl")


def one_line_error(result: Result, *fragments: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.output, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def review_block(text: str, rating: str = "5.0", unique_id: str = "r") -> str:
    return (
        f"<review>\n<unique_id>\n{unique_id}\n</unique_id>\n<rating>\n{rating}\n</rating>\n"
        f"<title>\nt\n</title>\n<review_text>\n{text}\n</review_text>\n</review>\n"
    )


def amazon_tree(root: Path, *, broken: bool = False) -> Path:
    """books and dvd, two positive and one negative review each (one block broken if asked)."""
    for domain in ("books", "dvd"):
        folder = root / "sorted_data_acl" / domain
        folder.mkdir(parents=True)
        positive = [review_block(f"I loved this {domain} item number {i}, truly great and fun.")
                    for i in range(2)]  # fmt: skip
        if broken and domain == "dvd":
            positive.append("<review>\n<rating>\n5.0\n</rating>\n</review>\n")  # no review_text
        (folder / "positive.review").write_text("".join(positive), encoding="latin-1")
        negative = review_block(f"This {domain} thing was dull and broke quickly.", "1.0")
        (folder / "negative.review").write_text(negative, encoding="latin-1")
    return root / "sorted_data_acl"


def shp_row(post: str, question: str, a: str, b: str, subreddit: str) -> str:
    return json.dumps({
        "post_id": post, "domain": f"{subreddit}_train", "upvote_ratio": 0.9, "history": question,
        "c_root_id_A": f"a{post}", "c_root_id_B": f"b{post}", "created_at_utc_A": 2,
        "created_at_utc_B": 1, "score_A": 30, "score_B": 10, "human_ref_A": a, "human_ref_B": b,
        "labels": 1, "seconds_difference": 1.0, "score_ratio": 3.0,
    })  # fmt: skip


def shp_tree(root: Path) -> Path:
    """askculinary (3 posts), askdocs (2) and legaladvice (2); one question in two subreddits."""
    posts = {
        "askculinary": ["Why does bread collapse?", "Is cast iron safe?", "How salty is pasta?"],
        "askdocs": ["Is 50 bpm normal?", "Ibuprofen and coffee?"],
        "legaladvice": ["How salty is pasta?", "Can my landlord keep my deposit?"],
    }
    for subreddit, questions in posts.items():
        (root / subreddit).mkdir(parents=True)
        lines = [shp_row(f"{subreddit}{i}", q, f"good answer {i}", f"bad answer {i}", subreddit)
                 for i, q in enumerate(questions)]  # fmt: skip
        (root / subreddit / "train.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def csg_pairs_file(path: Path) -> Path:
    rows = [{"prompt": f"i read this novel {i} and", "chosen": "it was great", "rejected": "dull",
             "domain": domain} for i, domain in enumerate(["books", "books", "dvd"])]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ list
def test_list_shows_every_source_including_synthetic() -> None:
    result = invoke("data", "list", "--json")
    assert result.exit_code == 0, result.output
    names = [info["name"] for info in json.loads(result.stdout)]
    assert names == [spec.name for spec in registry.list_sources()]
    assert {"synthetic", "amazon", "shp", "csg-pairs"} <= set(names)
    table = invoke("data", "list")
    assert table.exit_code == 0 and "synthetic" in table.output


# --------------------------------------------------------------------------------- inspect
def test_inspect_synthetic_counts_every_split_like_the_registry() -> None:
    result = invoke("data", "inspect", "synthetic", *SMALL, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload["splits"]) == {"finetune", "pref_train", "eval_reference", "eval_pref"}
    for split, summary in payload["splits"].items():
        direct = registry.load("synthetic", split=split, **SMALL_CONFIG)
        assert summary["per_domain"] == dict(direct.summary.per_domain), split
        assert summary["records"] == len(direct)
        assert len(payload["examples"][split]) == 2 * len(direct.domains)  # 2 per domain
    table = invoke("data", "inspect", "synthetic", *SMALL, "--domains", "books,dvd")
    assert table.exit_code == 0, table.output
    assert "books" in table.output and "kitchen" not in table.output
    assert "examples (finetune)" in table.output


def test_inspect_counts_malformed_rows_and_strict_fails_on_them(tmp_path: Path) -> None:
    root = amazon_tree(tmp_path / "amazon", broken=True)
    result = invoke("data", "inspect", "amazon", "--path", str(root), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)["splits"]["records"]
    assert summary["per_domain"] == {"books": 3, "dvd": 3}
    assert summary["skipped"] == {"missing_field:review_text": 1}
    table = invoke("data", "inspect", "amazon", "--path", str(root))
    assert "missing_field:review_text" in table.output and "skipped (malformed)" in table.output
    line = one_line_error(invoke("data", "inspect", "amazon", "--path", str(root), "--strict"))
    assert "positive.review" in line and "review_text" in line


def test_inspect_lists_missing_splits_and_a_named_missing_split_is_an_error(tmp_path) -> None:
    root = shp_tree(tmp_path / "shp")
    result = invoke("data", "inspect", "shp", "--path", str(root), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["splits"]["train"]["per_domain"] == {
        "askculinary": 3, "askdocs": 2, "legaladvice": 2}  # fmt: skip
    assert set(payload["missing_splits"]) == {"validation", "test"}
    one_line_error(invoke("data", "inspect", "shp", "--path", str(root), "--split", "test"), "test")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["inspect", "imdb"], ["unknown data source 'imdb'", "synthetic"]),
        (["inspect", "synthetic", "--domains", "book"], ["unknown domain(s) ['book']", "books"]),
        (["inspect", "shp", "--path", "/does/not/exist"], ["--path does not exist"]),
        (["inspect", "synthetic", "--path", "."], ["generated in memory"]),
        (["inspect", "synthetic", "--option", "sead=1"], ["sead", "unknown option"]),
        (["inspect", "synthetic", "--option", "=1"], ["--option expects KEY=VALUE"]),
        (["inspect", "synthetic", "--split", "dev"], ["split", "dev"]),
        (["split", "synthetic", "--protocol", "lodo", "--held-out", "toys"], ["--held-out"]),
        (["split", "synthetic", "--protocol", "lodo", "--add", "shp=/nope"], ["does not exist"]),
        (["split", "synthetic", "--protocol", "kfold"], ["'kfold' is not one of"]),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, fragments) -> None:
    one_line_error(invoke("data", *args), *fragments)


def test_a_requested_domain_without_rows_is_an_error(tmp_path: Path) -> None:
    path = csg_pairs_file(tmp_path / "pairs.jsonl")
    line = one_line_error(invoke("data", "inspect", "csg", "--path", str(path), "--domains",
                                 "books,kitchen"))  # fmt: skip
    assert "no records for domain(s) ['kitchen']" in line and "with records: books" in line
    one_line_error(invoke("data", "split", "csg", "--path", str(path), "--protocol", "lodo",
                          "--domains", "kitchen"), "['kitchen']")  # fmt: skip


def test_debug_shows_the_traceback() -> None:
    result = invoke("--debug", "data", "inspect", "synthetic", "--domains", "book")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "UnknownDomainError" in result.stderr


# ----------------------------------------------------------------------------------- split
def test_lodo_folds_match_apply_fold_and_share_no_prompt() -> None:
    result = invoke("data", "split", "synthetic", *SMALL, "--protocol", "lodo",
                    "--id-test-fraction", "0.2", "--seed", "3", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    folds = json.loads(result.stdout)["folds"]
    records = list(registry.load("synthetic", **SMALL_CONFIG))
    expected = leave_one_domain_out(sorted({r.domain for r in records}), id_test_fraction=0.2)
    assert [f["fold"] for f in folds] == [f.name for f in expected]
    for row, fold in zip(folds, expected, strict=True):
        split = apply_fold(fold, records, seed=3)
        held = fold.test_domains[0]
        assert row["train"] == len(split.train) and row["id test"] == len(split.id_test)
        assert row["test"] == f"{held}={len(split.test['test'])}"
        assert row["shared prompts"] == 0
        in_fold = [r for r in records if r.domain in fold.domains]
        total = row["train"] + len(split.test["test"]) + row["id test"] + row["dropped"]
        assert total == len(in_fold)
    only = invoke("data", "split", "synthetic", *SMALL, "--protocol", "leave-one-domain-out",
                  "--held-out", "dvd", "--json")  # fmt: skip
    assert [f["fold"] for f in json.loads(only.stdout)["folds"]] == ["lodo-dvd"]


def test_shp_groups_drop_training_pairs_whose_prompt_is_held_out(tmp_path: Path) -> None:
    root = shp_tree(tmp_path / "shp")
    result = invoke("data", "split", "shp", "--path", str(root), "--protocol", "shp-groups",
                    "--held-out", "legaladvice", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (fold,) = json.loads(result.stdout)["folds"]
    assert fold["fold"] == "shp-group6"
    assert fold["test"] == "changemyview+explainlikeimfive+legaladvice=2"
    assert fold["dropped"] == 1 and fold["train"] == 4  # "How salty is pasta?" left training
    assert fold["shared prompts"] == 0
    table = invoke("data", "split", "shp", "--path", str(root), "--protocol", "shp-groups")
    assert table.exit_code == 0 and "shp-group1" in table.output
    assert "note: no records for test domain(s)" in table.stderr


def summarize_tree(root: Path) -> Path:
    def row(i: int, info: dict, split: str) -> str:
        summaries = [{"text": f"good summary {i}"}, {"text": f"bad summary {i}"}]
        return json.dumps({"info": info, "summaries": summaries, "choice": 0, "split": split})

    lines = [row(i, {"id": f"t3_{i}", "post": f"post {i}", "subreddit": "tifu"}, "train")
             for i in range(4)]  # fmt: skip
    lines += [row(10 + i, {"id": f"cnn{i}", "article": f"news {i}", "site": site}, "valid2")
              for i, site in enumerate(["cnn", "cnn", "dailymail"])]  # fmt: skip
    (root / "comparisons").mkdir(parents=True)
    (root / "comparisons" / "batch1.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_dporm_prompt_shift_setting_on_summarize(tmp_path: Path) -> None:
    root = summarize_tree(tmp_path / "summarize")
    args = ["data", "split", "summarize", "--path", str(root), "--protocol", "dporm-II(b)"]
    result = invoke(*args, "--split", "all", "--id-test-fraction", "0.25", "--json")
    assert result.exit_code == 0, result.output
    (fold,) = json.loads(result.stdout)["folds"]
    assert fold["fold"] == "II(b)" and fold["test"] == "cnn=2, dailymail=1"
    assert (fold["train"], fold["id test"], fold["shared prompts"]) == (3, 1, 0)
    train_only = json.loads(invoke(*args, "--json").stdout)["folds"][0]  # default split: train
    assert train_only["test"] == "cnn=0, dailymail=0"


def test_per_domain_parts_match_per_domain_splits_and_report_shortfall() -> None:
    result = invoke("data", "split", "synthetic", "--option", "n_pref_train=30", "--protocol",
                    "per-domain", "--domains", "books", "--seed", "2", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    prefs = registry.load("synthetic", domains=["books"], n_pref_train=30)
    parts = per_domain_splits(prefs, seed=2)["books"]
    names = ("fine_tuning", "preference_train", "eval_reference", "eval_preference")
    assert row[:5] == ["books", *(len(getattr(parts, n)) for n in names)]
    assert row[5] == ", ".join(f"{k} {v}" for k, v in sorted(parts.shortfall.items()))
    assert parts.shortfall["eval_preference"] == 500 - row[4] > 0

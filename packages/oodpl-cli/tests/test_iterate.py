"""``oodpl iterate``: labelling rules, the DPORM labeller, per-iteration gold, a tiny real run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from oodpl.cli.main import oodpl
from oodpl.cli.pipelines.iterate import ChainRecord, dporm_labeller, label_pairs

TINY = [
    "iterate.iterations=2",
    "iterate.samples_per_prompt=3",
    "iterate.prompts_per_iteration=3",
    "iterate.eval_prompts=2",
    "iterate.sft_steps=1",
    "iterate.reward_steps=1",
    "iterate.dpo_steps=1",
    "iterate.iteration_dpo_steps=1",
    "data.domains=books,dvd",
    "data.sizes.fine_tuning=8",
    "data.sizes.preference_train=8",
    "data.sizes.eval_reference=2",
    "data.sizes.eval_preference=2",
    "train.batch_size=4",
    "model.vocab_size=300",
    "eval.temperatures=0.5,1.0",
    "eval.repetitions=2",
    "eval.max_new_tokens=6",
]


def test_label_pairs_takes_argmax_and_argmin_and_skips_uninformative_prompts() -> None:
    scores = {"good": 2.0, "fine": 1.0, "bad": -1.0, "same": 0.5, "also same": 0.5}
    prompts = ["p1", "p2", "p3", "p4"]
    samples = [
        ["fine", "bad", "good"],  # -> (good, bad)
        ["same", "also same"],  # equal scores: skipped
        ["good", "  ", ""],  # one non-empty response: skipped
        ["bad", "bad"],  # identical responses: skipped
    ]
    seen: list[tuple[str, str]] = []

    def labeller(ps, ys):
        seen.extend(zip(ps, ys, strict=True))
        return [scores[y] for y in ys]

    assert label_pairs(prompts, samples, labeller) == [("p1", "good", "bad")]
    assert ("p3", "  ") not in seen and ("p3", "") not in seen  # empty samples never scored


def test_gold_means_average_temperatures_per_repetition() -> None:
    chain = ChainRecord(gold=[{0.5: [1.0, 3.0], 1.0: [2.0, 5.0]}])
    ((value, spread),) = chain.gold_means()
    assert value == pytest.approx(2.75)  # repetitions: 1.5 and 4.0
    assert spread == pytest.approx(statistics.stdev([1.5, 4.0]))


def test_dporm_labeller_is_beta_times_the_log_ratio_of_the_two_policies() -> None:
    from oodpl.models.policy import Policy
    from oodpl.models.tokenizer import train_bpe_tokenizer

    texts = ["i read this novel and", "the plot was gripping", "the prose was dull and long"]
    tokenizer = train_bpe_tokenizer(texts * 4, vocab_size=300, model_max_length=64)
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=1, max_length=64)
    reference = Policy.from_preset("pythia-tiny", tokenizer, seed=2, max_length=64)
    prompts = [texts[0], texts[0]]
    responses = [texts[1], texts[2]]
    scores = dporm_labeller(policy, reference, 0.25, batch_size=1)(prompts, responses)
    for prompt, response, score in zip(prompts, responses, scores, strict=True):
        expected = []
        for model in (policy, reference):
            batch = model.completion_collator()([{"prompt": prompt, "response": response}])
            with torch.no_grad():
                logps, _ = model.sequence_logps(batch)
            expected.append(float(logps[0]))
        assert score == pytest.approx(0.25 * (expected[0] - expected[1]), rel=1e-5, abs=1e-6)


def test_tiny_iterate_reports_gold_reward_per_iteration(tmp_path: Path) -> None:
    args = ["iterate", "--output-dir", str(tmp_path), "--name", "it", "--no-progress"]
    result = CliRunner().invoke(oodpl, [*args, *(f"--set={s}" for s in TINY)], prog_name="oodpl")
    assert result.exit_code == 0, result.output + (result.stderr or "")
    results = tmp_path / "it" / "results"
    gold = json.loads((results / "i1-gold-per-iteration.json").read_text())
    assert gold["columns"] == ["π_0", "π_1", "π_2"]
    assert set(gold["rows"]) == {"EXRM", "DPORM"}
    assert gold["rows"]["EXRM"][0] == gold["rows"]["DPORM"][0]  # both chains start at π_0
    labels = json.loads((results / "i2-label-accuracy.json").read_text())
    for row in labels["rows"].values():
        assert all(v is None or 0.0 <= v <= 1.0 for v in row)
    for name in ("exrm", "dporm"):
        curve = json.loads((results / f"i3-gold-temperature-{name}.json").read_text())
        assert set(curve["methods"]) == {"π_0", "π_1", "π_2"}
        assert all(len(v) == 2 for m in curve["methods"].values() for v in m.values())
    assert "Iterative DPO" in (tmp_path / "it" / "report.md").read_text()
    assert "gold_reward" in result.stdout and "report:" in result.stdout

"""``oodpl iterate``: iterative DPO with an EXRM or DPORM labeller ([DPORM] Alg. 1, METHODS §4).

On the synthetic benchmark, from the SFT policy ``π`` (fine-tuned on every domain's completions):

1. ``π_0 = DPO(π, D)`` on the training domains' preference pairs ``D`` (LoRA + LM head);
2. the labeller ``r``: **EXRM**, a Bradley–Terry reward model trained on ``D``; or **DPORM**,
   ``π_0``'s implicit reward ``r(x, y) = β(log π_0(y|x) − log π(y|x))``;
3. for ``t = 1..T``: sample ``K`` responses per prompt from ``π_{t−1}`` for a fresh draw of
   training prompts, score them with ``r``, pair ``chosen = argmax_k r``, ``rejected =
   argmin_k r`` (prompts whose samples all score the same, or have fewer than two distinct
   non-empty responses, are skipped), and ``π_t = DPO(π_{t−1}, pairs)`` with ``π_{t−1}`` as the
   reference.

Each labeller runs its own chain from the same ``π_0``. Reported per iteration: the gold reward
of one sampled response per evaluation prompt (every domain, ``iterate.eval_prompts`` each),
averaged over ``eval.temperatures`` (± std over ``eval.repetitions``), and the labels' gold
agreement ``mean 1[r*(chosen) > r*(rejected)]``.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from oodpl.cli.config.schema import RunConfig
from oodpl.cli.errors import BadInputError
from oodpl.cli.pipelines.evaluate import gold_scorer, score_generations
from oodpl.cli.pipelines.exp_common import (
    StageTracker,
    Workbench,
    cpu_threads,
    mean,
    quiet_libraries,
    std,
)
from oodpl.cli.pipelines.study import experiment_data, model_plan
from oodpl.cli.report.results import GoldVsTemperature, MetricTable, Summary, SummaryRow
from oodpl.cli.run_dir import RunDir

LABELLER_NAMES = {"exrm": "EXRM", "dporm": "DPORM"}
MEANINGS = {
    "gold_reward": "mean gold reward r*(x, y) of one sampled response per evaluation prompt "
    "(synthetic benchmark), averaged over temperatures; ± std over repetitions",
    "label_accuracy": "share of the iteration's labelled pairs whose chosen response has the "
    "higher gold reward, mean 1[r*(chosen) > r*(rejected)]",
    "n_pairs": "labelled pairs DPO trained on in the iteration",
    "wall_time_s": "wall-clock seconds the run took",
}

Labeller = Callable[[Sequence[str], Sequence[str]], list[float]]


@dataclasses.dataclass
class ChainRecord:
    """One labeller's chain: gold reward per iteration (0 = ``π_0``) and label statistics."""

    gold: list[dict[float, list[float]]] = dataclasses.field(default_factory=list)
    label_accuracy: list[float | None] = dataclasses.field(default_factory=list)
    n_pairs: list[int] = dataclasses.field(default_factory=list)

    def gold_means(self) -> list[tuple[float, float | None]]:
        """Per iteration: (mean over temperatures and repetitions, std over repetitions)."""
        out = []
        for by_temp in self.gold:
            reps = len(next(iter(by_temp.values())))
            per_rep = [sum(v[r] for v in by_temp.values()) / len(by_temp) for r in range(reps)]
            out.append((sum(per_rep) / reps, std(per_rep)))
        return out


@dataclasses.dataclass
class IterateResult:
    run: RunDir
    report_md: Any
    report_html: Any
    rows: list[SummaryRow]
    chains: dict[str, ChainRecord]
    total_seconds: float


def dporm_labeller(policy: Any, reference: Any, beta: float, batch_size: int) -> Labeller:
    """``r(x, y) = β(log π_0(y|x) − log π(y|x))`` with summed response log-probs (METHODS §2)."""

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        records = [{"prompt": p, "response": y} for p, y in zip(prompts, responses, strict=True)]
        out = []
        for model in (policy, reference):
            collator = model.completion_collator()
            batches = (
                collator(records[i : i + batch_size]) for i in range(0, len(records), batch_size)
            )
            out.append(model.compute_logps(batches)["logps"].double())
        return [float(v) for v in beta * (out[0] - out[1])]

    return score


def label_pairs(
    prompts: Sequence[str], samples: Sequence[Sequence[str]], labeller: Labeller
) -> list[tuple[str, str, str]]:
    """``(prompt, argmax response, argmin response)`` per prompt with two distinct scores."""
    flat = [(p, y) for p, ys in zip(prompts, samples, strict=True) for y in ys if y.strip()]
    if not flat:
        return []
    scores = labeller([p for p, _ in flat], [y for _, y in flat])
    by_prompt: dict[str, list[tuple[float, str]]] = {}
    for (prompt, response), value in zip(flat, scores, strict=True):
        by_prompt.setdefault(prompt, []).append((value, response))
    pairs = []
    for prompt, scored in by_prompt.items():
        best = max(scored, key=lambda item: item[0])
        worst = min(scored, key=lambda item: item[0])
        if best[0] > worst[0] and best[1] != worst[1]:
            pairs.append((prompt, best[1], worst[1]))
    return pairs


def run_iterate(
    config: RunConfig,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    command: Sequence[str] | None = None,
) -> IterateResult:
    """Run iterative DPO for a resolved ``kind: iterate`` config (module docstring)."""
    from oodpl.cli.config.schema import EvalConfig
    from oodpl.core.records import Preference
    from oodpl.models.trainers._policy_common import GenerationOptions, sample_responses
    from oodpl.models.trainers.dpo import DPOConfig, train_dpo
    from oodpl.models.trainers.reward import RewardTrainConfig, train_reward_model

    if config.kind != "iterate":
        raise BadInputError(f"kind: expected 'iterate', got {config.kind!r}")
    started = time.perf_counter()
    it = config.iterate
    data = experiment_data(config)
    train_domains = [d for d in data.domains if d not in config.data.held_out]
    if not train_domains:
        raise BadInputError("data.held_out holds every domain: nothing is left to train on")
    plan = model_plan(config, it.sft_steps, it.sft_lr)
    if config.name is None:
        config = dataclasses.replace(config, name=RunDir.default_name("iterate"))
    run = RunDir.start(config, overwrite=overwrite, command=command)
    stages = 4 + len(it.labellers) * it.iterations  # SFT, π_0, gold of π_0, report + rounds
    tracker = StageTracker(
        stages + ("exrm" in it.labellers), disable=not show_progress, title="iterate"
    )
    dpo = config.train.dpo
    eval_config: EvalConfig = dataclasses.replace(config.eval, max_examples=it.eval_prompts)
    prompts = {d: [c.prompt for c in data.eval_reference[d]] for d in data.domains}
    if not any(prompts.values()):
        raise BadInputError("data.sizes.eval_reference: iterate needs evaluation prompts")
    train_prompts = sorted({p.prompt for p in data.records("preference_train", train_domains)})
    rng = random.Random(f"oodpl-iterate:{config.seed}")

    def dpo_config() -> DPOConfig:
        return DPOConfig(
            beta=dpo.beta,
            loss_type=dpo.loss_type,
            label_smoothing=dpo.label_smoothing,
            max_length=plan.max_length,
        )

    chains: dict[str, ChainRecord] = {}
    with tracker, cpu_threads(), quiet_libraries():
        wb = Workbench.create(
            data, plan, seed=config.seed, run=run, tracker=tracker, eval_config=eval_config
        )
        sft = wb.sft_policy("iterate")

        def gold_of(policy: Any, t: int) -> dict[float, list[float]]:
            scores = score_generations(
                policy, prompts, gold_scorer(wb.gold), eval_config, seed=config.seed + 97 * t
            )
            return scores["all"]

        with wb.stage("iterate", "π_0 = DPO(π, D)"):
            pi0 = wb.lora_policy(1)
            result = train_dpo(
                pi0,
                data.records("preference_train", train_domains),
                dpo_config(),
                engine=wb.engine(it.dpo_steps, it.dpo_lr),
            )
            wb.log("iterate", "dpo π_0", result.history)
        with wb.stage("iterate", "gold reward of π_0"):
            gold0 = gold_of(pi0, 0)
        labellers: dict[str, Labeller] = {}
        if "exrm" in it.labellers:
            with wb.stage("iterate", "EXRM labeller (BT on D)"):
                from oodpl.models.trainers._policy_common import score_responses

                reward_model = wb.reward_model(2)
                result = train_reward_model(
                    reward_model,
                    data.records("preference_train", train_domains),
                    RewardTrainConfig(margin=config.train.rm.margin, max_length=plan.max_length),
                    engine=wb.engine(it.reward_steps, it.reward_lr),
                )
                wb.log("iterate", "exrm", result.history)
                reward_model.eval()
                labellers["exrm"] = lambda p, y, m=reward_model: score_responses(m, p, y).tolist()
        if "dporm" in it.labellers:
            frozen = copy.deepcopy(pi0)
            frozen.eval()
            labellers["dporm"] = dporm_labeller(frozen, sft, dpo.beta, config.train.eval_batch_size)
        options = GenerationOptions(
            max_new_tokens=config.eval.max_new_tokens, temperature=it.sample_temperature
        )
        draws = [
            rng.sample(train_prompts, min(it.prompts_per_iteration, len(train_prompts)))
            for _ in range(it.iterations)
        ]
        for name in it.labellers:
            label = LABELLER_NAMES[name]
            chain = ChainRecord(gold=[gold0], label_accuracy=[None], n_pairs=[0])
            policy = pi0
            for t in range(1, it.iterations + 1):
                with wb.stage("iterate", f"{label} labeller: iteration {t}"):
                    batch = draws[t - 1]
                    samples = sample_responses(
                        policy, batch, it.samples_per_prompt, options, seed=config.seed + 1009 * t
                    )
                    triples = label_pairs(batch, samples, labellers[name])
                    domain_of = wb.gold.domain_of
                    agree = [
                        wb.gold(p, c, domain_of(p)) > wb.gold(p, r, domain_of(p))
                        for p, c, r in triples
                    ]
                    chain.label_accuracy.append(sum(agree) / len(agree) if agree else None)
                    chain.n_pairs.append(len(triples))
                    policy = copy.deepcopy(policy)
                    if triples:
                        pairs = [
                            Preference(p, c, r, domain_of(p), source="iterate")
                            for p, c, r in triples
                        ]
                        result = train_dpo(
                            policy,
                            pairs,
                            dpo_config(),
                            engine=wb.engine(
                                it.iteration_dpo_steps,
                                it.dpo_lr,
                                batch_size=min(plan.batch_size, len(pairs)),
                            ),
                        )
                        wb.log("iterate", f"{name} π_{t}", result.history)
                    chain.gold.append(gold_of(policy, t))
            chains[label] = chain
        with tracker.stage("report (Markdown + HTML)"):
            rows = _write_results(run, chains, config, time.perf_counter() - started)
            report_md, report_html = run.build_report()
    return IterateResult(run, report_md, report_html, rows, chains, time.perf_counter() - started)


def _write_results(
    run: RunDir, chains: dict[str, ChainRecord], config: RunConfig, seconds: float
) -> list[SummaryRow]:
    it = config.iterate
    columns = [f"π_{t}" for t in range(it.iterations + 1)]
    setup = (
        f"π_0 = DPO(π, D) ({it.dpo_steps} steps); then {it.iterations} iteration(s) of "
        f"{it.prompts_per_iteration} prompts × K={it.samples_per_prompt} samples (T="
        f"{it.sample_temperature}), labelled by argmax/argmin of the labeller, DPO "
        f"{it.iteration_dpo_steps} steps from π_(t−1) (β={config.train.dpo.beta}). Gold reward "
        f"over {it.eval_prompts} evaluation prompts per domain, temperatures "
        f"{config.eval.temperatures}, {config.eval.repetitions} repetition(s)."
    )
    gold_rows = {name: [m for m, _ in chain.gold_means()] for name, chain in chains.items()}
    gold_std = {name: [s for _, s in chain.gold_means()] for name, chain in chains.items()}
    run.write_result(
        "i1-gold-per-iteration",
        MetricTable(
            title="Iterative DPO: gold reward per iteration",
            description=setup,
            metric="gold_reward",
            columns=columns,
            rows=gold_rows,
            std=gold_std,
            row_label="labeller",
            meanings={"gold_reward": MEANINGS["gold_reward"]},
            order=10,
        ),
    )
    run.write_result(
        "i2-label-accuracy",
        MetricTable(
            title="Iterative DPO: gold agreement of the labels",
            description="Share of each iteration's pairs whose chosen response has the higher "
            "gold reward (π_0 has no labels).",
            metric="label_accuracy",
            columns=columns[1:],
            rows={name: chain.label_accuracy[1:] for name, chain in chains.items()},
            row_label="labeller",
            meanings={"label_accuracy": MEANINGS["label_accuracy"]},
            order=11,
        ),
    )
    for index, (name, chain) in enumerate(chains.items()):
        run.write_result(
            f"i3-gold-temperature-{name.lower()}",
            GoldVsTemperature(
                title=f"Iterative DPO ({name} labeller): gold reward versus temperature",
                description="One line per iteration's policy.",
                methods={columns[t]: by_temp for t, by_temp in enumerate(chain.gold)},
                meanings={"gold_reward": MEANINGS["gold_reward"]},
                order=20 + index,
            ),
        )
    rows = []
    for name, chain in chains.items():
        means = chain.gold_means()
        rows.append(SummaryRow("gold_reward", means[0][0], means[0][1], note=f"{name}: π_0"))
        rows.append(
            SummaryRow("gold_reward", means[-1][0], means[-1][1], note=f"{name}: {columns[-1]}")
        )
        accuracy = mean(chain.label_accuracy[1:])
        if accuracy is not None:
            rows.append(
                SummaryRow("label_accuracy", accuracy, note=f"{name}, mean over iterations")
            )
    rows.append(SummaryRow("wall_time_s", round(seconds, 1), note="before the report"))
    run.write_result(
        "00-summary",
        Summary(
            title="Key results",
            description="Iterative DPO on the synthetic benchmark ([DPORM] Alg. 1).",
            rows=rows,
            meanings=MEANINGS,
            order=0,
        ),
    )
    return rows


__all__ = ["ChainRecord", "IterateResult", "dporm_labeller", "label_pairs", "run_iterate"]

"""Experiment (a): out-of-distribution preference learning with a meta-learned reward ([OODPL]).

For each held-out test domain ``h`` (leave-one-domain-out, METHODS §3), starting from the shared
SFT policy ``π`` (fine-tuned on every domain's completions, the SFT baseline):

- **DPO**: DPO ([DPORM] loss, METHODS §2) on the training domains' preferences;
- **HPL**: ``L_out = −mean log σ(ℓ̄(y_w) − ℓ̄(y_l))`` directly on those preferences;
- **PPO(tr)**: PPO on training-domain prompts against a **MultiTask** reward model (BT with
  size-weighted sources, METHODS §5) trained on the training domains' preferences;
- **OODPL**: a reward model meta-learned by bilevel optimisation over the training domains
  ([OODPL] Alg. 1: per domain, adapt ``θ`` by ``K`` SGD steps of reward-weighted regression on
  the domain's completions, then follow the hypergradient of the adapted policy's ``L_out``),
  then meta-test (Alg. 2): reward-weighted regression with the frozen ``r_φ*`` on the *held-out*
  domain's own completions (its preferences are never used);
- **MT-RM meta-test** (ablation): the same meta-test with the MultiTask RM as the frozen reward,
  which separates what the meta-learning contributes from what adapting on the held-out
  domain's completions contributes.

Policies other than SFT train a LoRA adapter plus an LM-head copy on top of ``π``. Reported on
``h``: PL accuracy ``mean 1[ℓ̄(y_w) > ℓ̄(y_l)]`` on its evaluation pairs, the gold reward of one
sampled response per evaluation prompt at several temperatures (median and range over
repetitions), and the preference accuracy of the two reward models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from oodpl.cli.config.schema import EvalConfig
from oodpl.cli.pipelines.evaluate import (
    evaluate_policy,
    evaluate_reward_model,
    gold_scorer,
    score_generations,
)
from oodpl.cli.pipelines.exp_common import EXPERIMENT_MEANINGS, ORDER, Workbench, mean, view
from oodpl.cli.report.results import GoldVsTemperature, MetricTable, SummaryRow

EXPERIMENT = "a"
ABLATION = "MT-RM meta-test"
"""Meta-test with the MultiTask RM instead of the meta-learned one (isolates meta-learning)."""
METHODS = ("SFT", "DPO", "HPL", "PPO(tr)", "OODPL", ABLATION)
REWARD_MODELS = ("MultiTask RM", "meta-learned RM")


@dataclasses.dataclass(frozen=True)
class OodplPlan:
    """Steps and settings of experiment (a) (LoRA policies on top of the shared SFT ``π``)."""

    policy_lr: float = 1e-3
    dpo_steps: int = 150
    dpo_beta: float = 0.1
    hpl_steps: int = 150
    rm_steps: int = 150
    rm_lr: float = 1e-3
    ppo_iterations: int = 40
    ppo_rollout: int = 32
    ppo_kl_coef: float = 0.05
    meta_steps: int = 120
    meta_inner_steps: int = 2
    meta_inner_lr: float = 0.5
    meta_beta: float = 0.5
    meta_outer_lr: float = 3e-3
    meta_batch_size: int = 48
    meta_method: str = "unrolled"
    meta_test_steps: int = 150
    generation_prompts: int = 48
    temperatures: tuple[float, ...] = (0.5, 0.75, 1.0)
    repetitions: int = 3
    max_new_tokens: int = 48

    def eval_config(self) -> EvalConfig:
        return EvalConfig(
            temperatures=list(self.temperatures),
            repetitions=self.repetitions,
            max_new_tokens=self.max_new_tokens,
        )


@dataclasses.dataclass
class OodplOutcome:
    """Per held-out domain: PL accuracy per method, RM accuracy, gold reward of generations."""

    held_out: list[str]
    pl_accuracy: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    pl_accuracy_id: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    rm_accuracy: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    gold: dict[str, dict[str, dict[float, list[float]]]] = dataclasses.field(default_factory=dict)
    data_gold: dict[str, float] = dataclasses.field(default_factory=dict)


STAGES_PER_DOMAIN = 8  # DPO, HPL, MultiTask RM, PPO, meta, 2 meta-tests, evaluation


def planned_stages(n_held_out: int) -> int:
    return STAGES_PER_DOMAIN * n_held_out


def _train_domain_policies(wb: Workbench, plan: OodplPlan, train: Sequence[str]) -> dict[str, Any]:
    """DPO, HPL on the training domains' preferences, and the MultiTask RM + PPO(tr)."""
    from oodpl.models.trainers.dpo import DPOConfig, train_dpo
    from oodpl.models.trainers.hpl import HPLConfig, train_hpl
    from oodpl.models.trainers.ppo import PPOConfig, train_ppo
    from oodpl.models.trainers.reward import RewardTrainConfig, train_reward_model

    data = wb.data
    prefs = data.records("preference_train", train)
    out: dict[str, Any] = {}
    with wb.stage(EXPERIMENT, "DPO on training-domain preferences"):
        policy = wb.lora_policy(1)
        config = DPOConfig(beta=plan.dpo_beta, max_length=wb.plan.max_length)
        result = train_dpo(policy, prefs, config, engine=wb.engine(plan.dpo_steps, plan.policy_lr))
        wb.log(EXPERIMENT, "dpo", result.history)
        out["DPO"] = policy
    with wb.stage(EXPERIMENT, "HPL on training-domain preferences"):
        policy = wb.lora_policy(2)
        result = train_hpl(
            policy,
            prefs,
            HPLConfig(max_length=wb.plan.max_length),
            engine=wb.engine(plan.hpl_steps, plan.policy_lr),
        )
        wb.log(EXPERIMENT, "hpl", result.history)
        out["HPL"] = policy
    with wb.stage(EXPERIMENT, "MultiTask reward model"):
        reward_model = wb.reward_model(3)
        bundle = max(1, wb.plan.batch_size // len(train))  # bundles hold one pair per domain
        result = train_reward_model(
            reward_model,
            prefs,
            RewardTrainConfig(
                objective="multitask", group_by="domain", max_length=wb.plan.max_length
            ),
            engine=wb.engine(plan.rm_steps, plan.rm_lr, batch_size=bundle),
        )
        wb.log(EXPERIMENT, "multitask-rm", result.history)
        reward_model.eval()
        out["MultiTask RM"] = reward_model
    with wb.stage(EXPERIMENT, "PPO(tr) against the MultiTask RM"):
        from oodpl.models.trainers._policy_common import GenerationOptions

        policy = wb.lora_policy(4)
        config = PPOConfig(
            iterations=plan.ppo_iterations,
            rollout_size=plan.ppo_rollout,
            kl_coef=plan.ppo_kl_coef,
            generation=GenerationOptions(max_new_tokens=plan.max_new_tokens),
            seed=wb.seed,
            max_length=wb.plan.max_length,
        )
        prompts = [p.prompt for p in prefs]
        per_rollout = -(-plan.ppo_rollout // wb.plan.batch_size)  # minibatches per PPO epoch
        updates = plan.ppo_iterations * config.ppo_epochs * per_rollout
        result = train_ppo(
            policy,
            reward_model,
            prompts,
            config,
            engine=wb.engine(updates, plan.policy_lr, warmup_steps=0),
        )
        wb.log(EXPERIMENT, "ppo", result.history, key="policy_loss")
        out["PPO(tr)"] = policy
    return out


def _oodpl(wb: Workbench, plan: OodplPlan, train: Sequence[str], held_out: str) -> dict[str, Any]:
    """Meta-train ``r_φ`` on the training domains, meta-test on ``held_out``'s completions."""
    import torch

    from oodpl.models.trainers.meta import MetaDomain, MetaTrainConfig, train_meta

    data = wb.data
    with wb.stage(EXPERIMENT, f"meta-learn the reward ({plan.meta_steps} outer steps)"):
        reward_model = wb.reward_model(5)
        inner_policy = wb.lora_policy(5)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        reward_model.to(device)
        inner_policy.to(device)
        domains = {d: MetaDomain(data.fine_tuning[d], data.preference_train[d]) for d in train}
        config = MetaTrainConfig(
            steps=plan.meta_steps,
            inner_steps=plan.meta_inner_steps,
            inner_lr=plan.meta_inner_lr,
            support_batch_size=plan.meta_batch_size,
            query_batch_size=plan.meta_batch_size,
            beta=plan.meta_beta,
            method=plan.meta_method,
            outer_lr=plan.meta_outer_lr,
            outer_optimizer="adam",
            seed=wb.seed,
            max_length=wb.plan.max_length,
        )
        result = train_meta(reward_model, inner_policy, domains, config)
        wb.log(EXPERIMENT, "meta (outer loss)", result.history, key="outer_loss")
        reward_model.eval()
        reward_model.requires_grad_(False)
    with wb.stage(EXPERIMENT, f"meta-test on {held_out}'s completions"):
        policy = meta_test(wb, plan, reward_model, held_out, "meta-test")
    return {"OODPL": policy, "meta-learned RM": reward_model}


def meta_test(wb: Workbench, plan: OodplPlan, reward_model: Any, held_out: str, label: str) -> Any:
    """[OODPL] Alg. 2: reward-weighted regression of a fresh LoRA policy on ``held_out``'s
    completions with the frozen ``reward_model`` (lowest selection loss kept)."""
    from oodpl.models.trainers.meta_test import MetaTestConfig, train_meta_test

    policy = wb.lora_policy(6)
    steps = plan.meta_test_steps
    config = MetaTestConfig(
        beta=plan.meta_beta,
        eval_every=max(1, steps // 10),
        seed=wb.seed,
        max_length=wb.plan.max_length,
    )
    outcome = train_meta_test(
        policy,
        reward_model,
        wb.data.fine_tuning[held_out],
        config,
        engine=wb.engine(steps, plan.policy_lr),
        max_steps=steps,
    )
    wb.log(EXPERIMENT, label, outcome.history)
    return policy


def run_oodpl(wb: Workbench, plan: OodplPlan, held_out: Sequence[str]) -> OodplOutcome:
    """Experiment (a) for every domain in ``held_out`` (see the module docstring)."""
    outcome = OodplOutcome(held_out=list(held_out))
    eval_config = plan.eval_config()
    for h in held_out:
        train = [d for d in wb.data.domains if d != h]
        models = {"SFT": wb.sft_policy(EXPERIMENT)}
        models.update(_train_domain_policies(wb, plan, train))
        models.update(_oodpl(wb, plan, train, h))
        with wb.stage(EXPERIMENT, f"meta-test with the MultiTask RM on {h} (ablation)"):
            models[ABLATION] = meta_test(wb, plan, models["MultiTask RM"], h, "mt-rm-meta-test")
        with wb.stage(EXPERIMENT, f"evaluate on held-out {h}"):
            data = view(wb.data, train, [h])
            for name in METHODS:
                evaluation = evaluate_policy(models[name], data, eval_config, label=name)
                outcome.pl_accuracy.setdefault(name, {})[h] = evaluation.value("pl_accuracy", h)
                outcome.pl_accuracy_id.setdefault(name, {})[h] = evaluation.mean(
                    "pl_accuracy", "id"
                )
                scores = score_generations(
                    models[name],
                    wb.prompts([h], plan.generation_prompts),
                    gold_scorer(wb.gold),
                    eval_config,
                    seed=wb.seed,
                )
                outcome.gold.setdefault(h, {})[name] = scores[h]
            for name in REWARD_MODELS:
                evaluation = evaluate_reward_model(models[name], data, eval_config, label=name)
                outcome.rm_accuracy.setdefault(name, {})[h] = evaluation.value("accuracy", h)
            completions = wb.data.fine_tuning[h]
            outcome.data_gold[h] = sum(c.meta["gold"] for c in completions) / len(completions)
    return outcome


# ----------------------------------------------------------------------------------- results
def _columns(held_out: Sequence[str]) -> list[str]:
    return [*held_out, "mean"] if len(held_out) > 1 else list(held_out)


def _row(values: dict[str, float], held_out: Sequence[str]) -> list[float | None]:
    row = [values.get(h) for h in held_out]
    return [*row, mean(row)] if len(held_out) > 1 else row


def sections(outcome: OodplOutcome, plan: OodplPlan, wb: Workbench) -> dict[str, Any]:
    """The result sections of experiment (a), keyed by result file name."""
    held = outcome.held_out
    order = ORDER["oodpl"]
    setup = (
        f"Held out: {', '.join(held)} (trained on the other domains). Policies start from the "
        f"shared SFT policy ({wb.plan.preset}, {wb.plan.sft_steps} steps on every domain's "
        f"completions) and train a LoRA adapter + LM head: DPO {plan.dpo_steps} steps "
        f"(β={plan.dpo_beta}), HPL {plan.hpl_steps}, MultiTask RM {plan.rm_steps}, PPO(tr) "
        f"{plan.ppo_iterations} rollouts of {plan.ppo_rollout}, meta-learning {plan.meta_steps} "
        f"outer steps (K={plan.meta_inner_steps}, α={plan.meta_inner_lr}, β={plan.meta_beta}, "
        f"{plan.meta_method} hypergradient, {plan.meta_batch_size} items per support/query "
        f"batch), meta-test {plan.meta_test_steps} steps. {ABLATION}: the same meta-test with "
        "the MultiTask RM as the reward (isolates what meta-learning adds)."
    )
    out: dict[str, Any] = {
        "a1-pl-accuracy": MetricTable(
            title="(a) OODPL: PL accuracy on the held-out domain",
            description=setup,
            metric="pl_accuracy",
            columns=_columns(held),
            rows={m: _row(outcome.pl_accuracy[m], held) for m in METHODS},
            order=order,
        ),
        "a2-rm-accuracy": MetricTable(
            title="(a) OODPL: reward-model accuracy on the held-out domain",
            description="The MultiTask RM (BT on the training domains, used by PPO(tr)) and "
            "the meta-learned RM (used by OODPL's meta-test) on the held-out evaluation pairs.",
            metric="accuracy",
            columns=_columns(held),
            rows={m: _row(outcome.rm_accuracy[m], held) for m in REWARD_MODELS},
            meanings={"accuracy": EXPERIMENT_MEANINGS["accuracy"]},
            order=order + 1,
        ),
    }
    for index, h in enumerate(held):
        out[f"a3-gold-{h}"] = GoldVsTemperature(
            title=f"(a) OODPL: gold reward of generations on {h}",
            description=f"One sampled response per evaluation prompt of {h} "
            f"({plan.generation_prompts} prompts, {plan.max_new_tokens} new tokens at most), "
            f"{plan.repetitions} repetition(s) per temperature. For scale: the mean gold reward "
            f"of {h}'s fine-tuning responses (what SFT imitates) is {outcome.data_gold[h]:.3f}.",
            methods={m: outcome.gold[h][m] for m in METHODS},
            metric="gold_reward",
            meanings={"gold_reward": EXPERIMENT_MEANINGS["gold_reward"]},
            order=order + 2 + index,
        )
    return out


def summary_rows(outcome: OodplOutcome) -> list[SummaryRow]:
    """Headline rows: PL accuracy and gold reward (highest temperature, median) per method."""
    held = outcome.held_out
    where = held[0] if len(held) == 1 else f"mean over {len(held)} held-out domains"
    rows = []
    for method in METHODS:
        value = mean([outcome.pl_accuracy[method].get(h) for h in held])
        rows.append(SummaryRow("pl_accuracy", value, note=f"(a) {method}, {where}"))
    for method in METHODS:
        medians = []
        for h in held:
            by_temp = outcome.gold[h][method]
            values = sorted(by_temp[max(by_temp)])
            medians.append(values[len(values) // 2])
        top = max(outcome.gold[held[0]][method])
        rows.append(
            SummaryRow("gold_reward", mean(medians), note=f"(a) {method}, T={top:g}, {where}")
        )
    return rows


__all__ = [
    "METHODS",
    "OodplOutcome",
    "OodplPlan",
    "planned_stages",
    "run_oodpl",
    "sections",
    "summary_rows",
]

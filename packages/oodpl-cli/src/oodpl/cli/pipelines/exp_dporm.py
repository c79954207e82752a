"""Experiment (b): explicit reward model (EXRM) versus DPO's implicit reward (DPORM) ([DPORM]).

One *setting* per training domain ``d`` (the synthetic analogue of [DPORM]'s settings I(a)–I(c):
train on one dataset, test on the others; METHODS §4): from the shared SFT policy ``π``,

- **EXRM**: a reward model ``r_φ`` trained with the Bradley–Terry loss on ``d``'s preferences
  (METHODS §1);
- **DPORM**: a LoRA policy trained with DPO on the same pairs; its implicit reward
  ``r_dpo(x, y) = β(log π_θ(y|x) − log π(y|x))`` ranks pairs (METHODS §2, reference = ``π``).

Both are scored on every domain's evaluation pairs: ``accuracy = mean 1[r(y_w) > r(y_l)]``. The
diagonal is in-distribution (ID), the rest out-of-distribution (OOD); the report derives the ID
accuracy, the mean OOD accuracy and the drop, and counts the share of (setting, OOD domain)
cells where EXRM beats DPORM (``exrm_win_share``). :mod:`oodpl.cli.pipelines.study` repeats this
over seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from oodpl.cli.config.schema import EvalConfig
from oodpl.cli.pipelines.evaluate import (
    evaluate_policy,
    evaluate_reward_model,
    reference_pair_logps,
)
from oodpl.cli.pipelines.exp_common import EXPERIMENT_MEANINGS, ORDER, Workbench, mean, view
from oodpl.cli.report.results import AccuracyMatrix, MetricTable, SummaryRow

MODELS = ("EXRM", "DPORM")
METRICS = {"EXRM": "exrm_accuracy", "DPORM": "dporm_accuracy"}
STAGES_PER_SETTING = 3  # EXRM, DPO, evaluation


@dataclasses.dataclass(frozen=True)
class DpormPlan:
    """Steps and learning rates of each setting's EXRM and DPO policy."""

    rm_steps: int = 100
    rm_lr: float = 1e-3
    dpo_steps: int = 100
    dpo_lr: float = 1e-3
    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    margin: float = 0.0


@dataclasses.dataclass
class DpormOutcome:
    """``accuracy[model][setting][eval domain]`` for model in EXRM, DPORM."""

    settings: list[str]
    domains: list[str]
    accuracy: dict[str, dict[str, dict[str, float]]] = dataclasses.field(default_factory=dict)
    reward_models: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def id_accuracy(self, model: str, setting: str) -> float | None:
        return self.accuracy[model][setting].get(setting)

    def ood_accuracy(self, model: str, setting: str) -> float | None:
        row = self.accuracy[model][setting]
        return mean([v for d, v in row.items() if d != setting])

    def win_cells(self) -> tuple[int, int]:
        """(cells where EXRM > DPORM, OOD cells compared)."""
        wins = total = 0
        for setting in self.settings:
            for domain in self.domains:
                if domain == setting:
                    continue
                exrm = self.accuracy["EXRM"][setting].get(domain)
                dporm = self.accuracy["DPORM"][setting].get(domain)
                if exrm is None or dporm is None:
                    continue
                total += 1
                wins += exrm > dporm
        return wins, total


def planned_stages(n_settings: int) -> int:
    return STAGES_PER_SETTING * n_settings


def run_dporm(
    wb: Workbench,
    plan: DpormPlan,
    settings: Sequence[str],
    *,
    experiment: str = "b",
    eval_config: EvalConfig | None = None,
) -> DpormOutcome:
    """Train EXRM and DPO on each setting's domain; score both on every domain."""
    from oodpl.models.trainers.dpo import DPOConfig, train_dpo
    from oodpl.models.trainers.reward import RewardTrainConfig, train_reward_model

    eval_config = eval_config or EvalConfig()
    domains = list(wb.data.domains)
    unknown = [s for s in settings if s not in domains]
    if unknown:
        raise ValueError(f"settings {unknown} are not domains of the data ({domains})")
    outcome = DpormOutcome(settings=list(settings), domains=domains)
    reference = None
    for index, setting in enumerate(settings):
        pairs = wb.data.preference_train[setting]
        with wb.stage(experiment, f"EXRM on {setting}"):
            reward_model = wb.reward_model(10 + index)
            result = train_reward_model(
                reward_model,
                pairs,
                RewardTrainConfig(margin=plan.margin, max_length=wb.plan.max_length),
                engine=wb.engine(plan.rm_steps, plan.rm_lr),
            )
            wb.log(experiment, f"exrm-{setting}", result.history)
            reward_model.eval()
        with wb.stage(experiment, f"DPO on {setting}"):
            policy = wb.lora_policy(10 + index)
            result = train_dpo(
                policy,
                pairs,
                DPOConfig(
                    beta=plan.beta,
                    loss_type=plan.loss_type,
                    label_smoothing=plan.label_smoothing,
                    max_length=wb.plan.max_length,
                ),
                engine=wb.engine(plan.dpo_steps, plan.dpo_lr),
            )
            wb.log(experiment, f"dpo-{setting}", result.history)
        with wb.stage(experiment, f"evaluate the {setting} models on every domain"):
            data = view(wb.data, [setting], [d for d in domains if d != setting])
            if reference is None:  # π's log-probs on every evaluation pair, once
                reference = reference_pair_logps(wb.sft_policy(experiment), data, eval_config)
            exrm = evaluate_reward_model(reward_model, data, eval_config, label="EXRM")
            dporm = evaluate_policy(
                policy, data, eval_config, label="DPORM", reference_logps=reference, beta=plan.beta
            )
            outcome.accuracy.setdefault("EXRM", {})[setting] = {
                d: exrm.value("accuracy", d) for d in domains
            }
            outcome.accuracy.setdefault("DPORM", {})[setting] = {
                d: dporm.value("dporm_accuracy", d) for d in domains
            }
            outcome.reward_models[setting] = reward_model
    return outcome


# ----------------------------------------------------------------------------------- results
def matrices(
    accuracy: dict[str, dict[str, dict[str, float]]],
    settings: Sequence[str],
    domains: Sequence[str],
    *,
    name: str,
    title: str,
    order: int,
    description: str,
) -> dict[str, AccuracyMatrix]:
    """One ID/OOD accuracy matrix per model (rows: trained on, columns: evaluated on), named
    ``<name>-exrm`` / ``<name>-dporm`` and titled ``<title> <model> accuracy ...``."""
    out = {}
    for index, model in enumerate(MODELS):
        out[f"{name}-{model.lower()}"] = AccuracyMatrix(
            title=f"{title} {model} accuracy, trained on one domain, evaluated on each",
            description=description,
            train_domains=list(settings),
            eval_domains=list(domains),
            values=[[accuracy[model][s].get(d) for d in domains] for s in settings],
            metric=METRICS[model],
            meanings={"exrm_accuracy": EXPERIMENT_MEANINGS["exrm_accuracy"]},
            order=order + index,
        )
    return out


def ood_table(
    rows: dict[str, list[float | None]],
    columns: Sequence[str],
    *,
    title: str,
    description: str,
    order: int,
    std: dict[str, list[float | None]] | None = None,
) -> MetricTable:
    """Mean OOD accuracy of EXRM and DPORM per setting (``std`` over seeds, when given)."""
    return MetricTable(
        title=title,
        description=description,
        metric="mean_ood_accuracy",
        columns=list(columns),
        rows=rows,
        std=std or {},
        row_label="reward",
        order=order,
    )


def sections(outcome: DpormOutcome, plan: DpormPlan, wb: Workbench) -> dict[str, Any]:
    """The result sections of experiment (b), keyed by result file name."""
    order = ORDER["dporm"]
    description = (
        f"EXRM: BT reward model, {plan.rm_steps} steps; DPORM: implicit reward of a DPO policy "
        f"(LoRA + LM head on the SFT policy, {plan.dpo_steps} steps, β={plan.beta}, reference = "
        "the SFT policy). Diagonal cells are in-distribution."
    )
    out: dict[str, Any] = dict(
        matrices(
            outcome.accuracy,
            outcome.settings,
            outcome.domains,
            name="b1-matrix",
            title="(b) EXRM vs DPORM:",
            order=order,
            description=description,
        )
    )
    rows = {}
    for model in MODELS:
        values = [outcome.ood_accuracy(model, s) for s in outcome.settings]
        rows[model] = [*values, mean(values)]
    wins, total = outcome.win_cells()
    out["b3-mean-ood"] = ood_table(
        rows,
        [*outcome.settings, "mean"],
        title="(b) EXRM vs DPORM: mean OOD accuracy per training domain",
        description=f"Mean accuracy over the domains not trained on. EXRM beats DPORM in "
        f"{wins} of {total} (setting, OOD domain) cells.",
        order=order + 2,
    )
    return out


def summary_rows(outcome: DpormOutcome) -> list[SummaryRow]:
    rows = []
    for model in MODELS:
        ids = [outcome.id_accuracy(model, s) for s in outcome.settings]
        oods = [outcome.ood_accuracy(model, s) for s in outcome.settings]
        rows.append(SummaryRow("id_accuracy", mean(ids), note=f"(b) {model}"))
        rows.append(SummaryRow("mean_ood_accuracy", mean(oods), note=f"(b) {model}"))
    wins, total = outcome.win_cells()
    if total:
        rows.append(
            SummaryRow("exrm_win_share", wins / total, note=f"(b) {wins}/{total} OOD cells")
        )
    return rows


__all__ = [
    "MODELS",
    "DpormOutcome",
    "DpormPlan",
    "matrices",
    "ood_table",
    "planned_stages",
    "run_dporm",
    "sections",
    "summary_rows",
]

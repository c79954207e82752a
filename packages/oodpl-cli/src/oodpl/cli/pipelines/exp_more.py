"""Experiment (c): multi-source reward learning — MultiTask vs MORE vs Top ([MORE], METHODS §5).

Every domain is a preference *source*. On top of the shared SFT policy's transformer:

- **MultiTask**: one reward model, each batch holding one pair per source, loss
  ``Σ_i λ_i L_BT(B_i)`` with fixed ``λ_i ∝ |D_i|``;
- **MORE**: the same batches with ``λ = argmin_{λ∈Δ} ‖Σ_i λ_i g_i‖²`` recomputed every step from
  the per-source gradients ``g_i`` of the value head (min-norm, l2-normalised);
- **Top**: one single-source BT reward model per source, scored on its own source's pairs.

Reported per domain: preference accuracy ``mean 1[r(y_w) > r(y_l)]`` and the expected
calibration error of ``p = σ(r_w − r_l)`` (both orientations of every pair, equal-width bins),
reliability diagrams, and the reward differences ``d = r_w − r_l`` with Tukey-fence outliers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from oodpl.cli.config.schema import EvalConfig
from oodpl.cli.pipelines.evaluate import Evaluation, evaluate_reward_model
from oodpl.cli.pipelines.exp_common import EXPERIMENT_MEANINGS, ORDER, Workbench, mean, view
from oodpl.cli.pipelines.sections import calibration_section, differences_section
from oodpl.cli.report.results import MetricTable, SummaryRow

EXPERIMENT = "c"
METHODS = ("MultiTask", "MORE", "Top")


@dataclasses.dataclass(frozen=True)
class MorePlan:
    """Steps and learning rate of the multi-source reward models (and of Top's, if trained)."""

    steps: int = 150
    lr: float = 1e-3
    top_steps: int = 100
    normalize_gradients: bool = True
    n_bins: int = 10


@dataclasses.dataclass
class MoreOutcome:
    """Per method, the evaluation on every domain (Top: each domain by its own source's RM)."""

    domains: list[str]
    evaluations: dict[str, Evaluation] = dataclasses.field(default_factory=dict)

    def value(self, method: str, metric: str, domain: str) -> float | None:
        return self.evaluations[method].value(metric, domain)

    def calibration(self, method: str, domain: str) -> float | None:
        result = self.evaluations[method].domains.get(domain)
        return None if result is None else float(result.calibration.ece)


def planned_stages(train_top: bool) -> int:
    return 3 + (1 if train_top else 0)  # MultiTask, MORE, [Top], evaluation


def run_more(
    wb: Workbench,
    plan: MorePlan,
    *,
    single_source: Mapping[str, Any] | None = None,
    eval_config: EvalConfig | None = None,
) -> MoreOutcome:
    """Train MultiTask and MORE on every source; ``single_source`` (domain -> BT reward model,
    e.g. experiment (b)'s EXRMs) are Top's models, trained here when not given."""
    from oodpl.models.trainers.reward import RewardTrainConfig, train_reward_model

    eval_config = eval_config or EvalConfig(n_bins=plan.n_bins)
    domains = list(wb.data.domains)
    if len(domains) < 2:
        raise ValueError(f"experiment (c) needs at least two sources (domains), got {domains}")
    pairs = wb.data.records("preference_train", domains)
    bundle = max(1, wb.plan.batch_size // len(domains))
    data = view(wb.data, domains, [])
    outcome = MoreOutcome(domains=domains)
    for index, (method, objective) in enumerate((("MultiTask", "multitask"), ("MORE", "more"))):
        with wb.stage(EXPERIMENT, f"{method} reward model on {len(domains)} sources"):
            reward_model = wb.reward_model(20 + index)
            config = RewardTrainConfig(
                objective=objective,
                group_by="domain",
                more_normalize=plan.normalize_gradients,
                max_length=wb.plan.max_length,
            )
            engine = wb.engine(plan.steps, plan.lr, batch_size=bundle)
            result = train_reward_model(reward_model, pairs, config, engine=engine)
            wb.log(EXPERIMENT, method.lower(), result.history)
            reward_model.eval()
        outcome.evaluations[method] = evaluate_reward_model(
            reward_model, data, eval_config, label=method
        )
    models = dict(single_source or {})
    missing = [d for d in domains if d not in models]
    if missing:
        with wb.stage(EXPERIMENT, f"Top: single-source reward models ({len(missing)})"):
            for index, domain in enumerate(missing):
                reward_model = wb.reward_model(30 + index)
                result = train_reward_model(
                    reward_model,
                    wb.data.preference_train[domain],
                    RewardTrainConfig(max_length=wb.plan.max_length),
                    engine=wb.engine(plan.top_steps, plan.lr),
                )
                wb.log(EXPERIMENT, f"top-{domain}", result.history)
                reward_model.eval()
                models[domain] = reward_model
    with wb.stage(EXPERIMENT, "evaluate on every source"):
        per_domain = {}
        for domain in domains:
            own = view(wb.data, [domain], [])
            evaluation = evaluate_reward_model(models[domain], own, eval_config, label="Top")
            per_domain[domain] = evaluation.domains[domain]
        outcome.evaluations["Top"] = Evaluation("Top", "rm", tuple(domains), (), per_domain)
    return outcome


# ----------------------------------------------------------------------------------- results
def sections(outcome: MoreOutcome, plan: MorePlan, wb: Workbench) -> dict[str, Any]:
    """The result sections of experiment (c), keyed by result file name."""
    order = ORDER["more"]
    domains = outcome.domains
    columns = [*domains, "mean"]
    setup = (
        f"Sources: {', '.join(domains)}. MultiTask and MORE: {plan.steps} steps, one pair per "
        f"source in every batch; Top: a BT reward model per source ({plan.top_steps} steps "
        "unless experiment (b) trained it), scored on its own source."
    )

    def table(metric: str, values: Any, higher: bool, offset: int, title: str) -> MetricTable:
        rows = {}
        for method in METHODS:
            row = [values(method, d) for d in domains]
            rows[method] = [*row, mean(row)]
        return MetricTable(
            title=title,
            description=setup,
            metric=metric,
            columns=columns,
            rows=rows,
            higher_is_better=higher,
            meanings={metric: EXPERIMENT_MEANINGS[metric]},
            order=order + offset,
        )

    out: dict[str, Any] = {
        "c1-accuracy": table(
            "accuracy",
            lambda m, d: outcome.value(m, "accuracy", d),
            True,
            0,
            "(c) MultiTask vs MORE vs Top: preference accuracy per source",
        ),
        "c2-ece": table(
            "ece",
            outcome.calibration,
            False,
            1,
            "(c) MultiTask vs MORE vs Top: expected calibration error per source",
        ),
    }
    for index, method in enumerate(METHODS):
        section = calibration_section(outcome.evaluations[method], plan.n_bins, "uniform")
        section.title = f"(c) Calibration of {method}"
        section.order = order + 2 + index
        out[f"c3-calibration-{method.lower()}"] = section
    differences = differences_section([outcome.evaluations[m] for m in METHODS])
    differences.title = "(c) Reward differences d = r_w − r_l per method and source"
    differences.order = order + 2 + len(METHODS)
    out["c4-reward-differences"] = differences
    return out


def summary_rows(outcome: MoreOutcome) -> list[SummaryRow]:
    rows = []
    for method in METHODS:
        accuracy = mean([outcome.value(method, "accuracy", d) for d in outcome.domains])
        rows.append(SummaryRow("accuracy", accuracy, note=f"(c) {method}, mean over sources"))
    for method in METHODS:
        ece = mean([outcome.calibration(method, d) for d in outcome.domains])
        rows.append(SummaryRow("ece", ece, note=f"(c) {method}, mean over sources"))
    return rows


__all__ = ["METHODS", "MoreOutcome", "MorePlan", "planned_stages", "run_more", "sections"]

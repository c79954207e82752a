"""``oodpl study dporm``: EXRM versus DPORM over settings and seeds ([DPORM], METHODS §4).

Each seed trains its own SFT policy ``π`` and, for every *setting* (a training domain of the
synthetic benchmark; OOD = the other domains, the analogue of [DPORM]'s I(a)–I(c)), an explicit
reward model (BT) and a DPO policy on that domain's preferences
(:func:`oodpl.cli.pipelines.exp_dporm.run_dporm`). Reported, as mean ± sample std over seeds:

- ID accuracy (the setting's own domain), mean OOD accuracy and the drop ``ID − OOD`` per
  setting, for EXRM (``mean 1[r_φ(y_w) > r_φ(y_l)]``) and DPORM (``r_dpo = β(logπ_θ − logπ)``);
- the ID/OOD accuracy matrices averaged over seeds;
- ``exrm_win_share``: the share of (seed, setting, OOD domain) cells where EXRM is more accurate
  than DPORM ([DPORM] counts how often EXRM generalises better).

Config: kind ``study`` (``study.seeds``, ``study.settings``, stage steps/lrs), plus ``model``
(preset, LoRA), ``data`` (synthetic sizes/domains), ``train.batch_size``, ``train.dpo`` and
``train.rm.margin``; see :mod:`oodpl.cli.config.experiments`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from oodpl.cli.config.schema import RunConfig
from oodpl.cli.errors import BadInputError
from oodpl.cli.pipelines import exp_dporm
from oodpl.cli.pipelines.exp_common import (
    ORDER,
    ModelPlan,
    StageTracker,
    Workbench,
    cpu_threads,
    mean,
    quiet_libraries,
    std,
    synthetic_data,
)
from oodpl.cli.report.results import Summary, SummaryRow
from oodpl.cli.run_dir import RunDir

MEASURES = ("id_accuracy", "mean_ood_accuracy", "accuracy_drop")


def model_plan(config: RunConfig, sft_steps: int, sft_lr: float) -> ModelPlan:
    """The shared-model settings of an experiment kind from ``model`` and ``train``."""
    if config.model.path is not None:
        raise BadInputError(
            f"model.path: kind {config.kind} builds its models from a preset (model.preset), "
            "it does not load checkpoints"
        )
    if not config.model.lora.enabled:
        raise BadInputError(f"model.lora.enabled: kind {config.kind} trains LoRA policies")
    return ModelPlan(
        preset=str(config.model.preset),
        vocab_size=config.model.vocab_size,
        max_length=config.model.max_length,
        batch_size=config.train.batch_size,
        sft_steps=sft_steps,
        sft_lr=sft_lr,
        lora_rank=config.model.lora.rank,
        lora_alpha=config.model.lora.alpha,
        attn_implementation=config.model.attn_implementation,
    )


def experiment_data(config: RunConfig) -> Any:
    """The synthetic benchmark of ``data`` (the only source with the gold reward these need)."""
    if config.data.source.strip().lower() != "synthetic":
        raise BadInputError(
            f"data.source: kind {config.kind} runs on the synthetic benchmark (source "
            f"'synthetic'), got {config.data.source!r}; train on real data with 'oodpl train'"
        )
    domains = list(dict.fromkeys([*config.data.domains, *config.data.held_out]))
    try:
        return synthetic_data(config.data.sizes, domains=domains, seed=config.data.seed)
    except ValueError as exc:
        raise BadInputError(f"data: {exc}") from exc


@dataclasses.dataclass
class StudyResult:
    run: RunDir
    report_md: Any
    report_html: Any
    rows: list[SummaryRow]
    outcomes: list[exp_dporm.DpormOutcome]
    total_seconds: float


def _measure(
    outcome: exp_dporm.DpormOutcome, model: str, setting: str, measure: str
) -> float | None:
    ident = outcome.id_accuracy(model, setting)
    ood = outcome.ood_accuracy(model, setting)
    if measure == "id_accuracy":
        return ident
    if measure == "mean_ood_accuracy":
        return ood
    return None if ident is None or ood is None else ident - ood


def _present(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def aggregate(
    outcomes: Sequence[exp_dporm.DpormOutcome], plan: exp_dporm.DpormPlan, seeds: Sequence[int]
) -> tuple[dict[str, Any], list[SummaryRow]]:
    """Sections (mean ± std over seeds) and summary rows of a finished study."""
    first = outcomes[0]
    settings, domains = first.settings, first.domains
    order = ORDER["study"]
    n = len(outcomes)
    setup = (
        f"{n} seed(s) ({', '.join(map(str, seeds))}); per seed: SFT policy, then per setting "
        f"an EXRM ({plan.rm_steps} steps) and a DPO policy ({plan.dpo_steps} steps, "
        f"β={plan.beta}, {plan.loss_type}) on the setting's domain. Values: mean ± sample std "
        "over seeds."
    )
    averaged = {
        model: {
            s: {
                d: mean([o.accuracy[model][s].get(d) for o in outcomes])  # type: ignore[misc]
                for d in domains
            }
            for s in settings
        }
        for model in exp_dporm.MODELS
    }
    sections: dict[str, Any] = dict(
        exp_dporm.matrices(
            averaged,  # type: ignore[arg-type]
            settings,
            domains,
            name="s1-matrix",
            title="EXRM vs DPORM (mean over seeds):",
            order=order,
            description=setup,
        )
    )
    rows: list[SummaryRow] = []
    for index, measure in enumerate(MEASURES):
        values, spread = {}, {}
        for model in exp_dporm.MODELS:
            per_seed = [
                [_measure(o, model, s, measure) for s in settings] for o in outcomes
            ]  # [seed][setting]
            columns = [_present([row[i] for row in per_seed]) for i in range(len(settings))]
            overall = _present([mean(row) for row in per_seed])  # per seed, over settings
            values[model] = [*(mean(c) for c in columns), mean(overall)]
            spread[model] = [*(std(c) for c in columns), std(overall)]
            if overall:
                rows.append(
                    SummaryRow(
                        measure,
                        sum(overall) / len(overall),
                        std(overall),
                        note=f"{model}, mean over settings and {n} seed(s)",
                    )
                )
        table = exp_dporm.ood_table(
            values,
            [*settings, "mean"],
            title=f"EXRM vs DPORM: {measure} per setting (mean ± std over seeds)",
            description=setup,
            order=order + 2 + index,
            std=spread,
        )
        table.metric = measure
        table.higher_is_better = measure != "accuracy_drop"
        sections[f"s2-{measure}"] = table
    cells = [o.win_cells() for o in outcomes]
    wins, total = sum(w for w, _ in cells), sum(t for _, t in cells)
    if total:
        shares = [w / t for w, t in cells if t]
        rows.append(
            SummaryRow(
                "exrm_win_share",
                wins / total,
                std(shares),
                note=f"{wins}/{total} (seed, setting, OOD domain) cells",
            )
        )
    return sections, rows


def run_study(
    config: RunConfig,
    *,
    overwrite: bool = False,
    show_progress: bool = True,
    command: Sequence[str] | None = None,
) -> StudyResult:
    """Run ``oodpl study dporm`` for a resolved ``kind: study`` config (module docstring)."""
    if config.kind != "study":
        raise BadInputError(f"kind: expected 'study', got {config.kind!r}")
    started = time.perf_counter()
    study = config.study
    data = experiment_data(config)
    settings = list(study.settings) or list(data.domains)
    unknown = [s for s in settings if s not in data.domains]
    if unknown:
        raise BadInputError(
            f"study.settings: {unknown} are not domains of the data ({', '.join(data.domains)})"
        )
    if len(data.domains) < 2:
        raise BadInputError("data.domains: the study needs at least two domains (ID and OOD)")
    plan = model_plan(config, study.sft_steps, study.sft_lr)
    dpo = config.train.dpo
    dplan = exp_dporm.DpormPlan(
        rm_steps=study.reward_steps,
        rm_lr=study.reward_lr,
        dpo_steps=study.dpo_steps,
        dpo_lr=study.dpo_lr,
        beta=dpo.beta,
        loss_type=dpo.loss_type,
        label_smoothing=dpo.label_smoothing,
        margin=config.train.rm.margin,
    )
    if config.name is None:
        config = dataclasses.replace(config, name=RunDir.default_name("study-dporm"))
    run = RunDir.start(config, overwrite=overwrite, command=command)
    per_seed = 1 + exp_dporm.planned_stages(len(settings))
    tracker = StageTracker(
        per_seed * len(study.seeds) + 1, disable=not show_progress, title="study"
    )
    outcomes = []
    with tracker, cpu_threads(), quiet_libraries():
        for seed in study.seeds:
            wb = Workbench.create(
                data, plan, seed=seed, run=run, tracker=tracker, eval_config=config.eval
            )
            wb.sft_policy(f"seed{seed}")
            outcomes.append(
                exp_dporm.run_dporm(
                    wb, dplan, settings, experiment=f"seed{seed}", eval_config=config.eval
                )
            )
        sections, rows = aggregate(outcomes, dplan, study.seeds)
        with tracker.stage("report (Markdown + HTML)"):
            for name, section in sections.items():
                run.write_result(name, section)
            total = time.perf_counter() - started
            rows.append(SummaryRow("wall_time_s", round(total, 1), note="before the report"))
            run.write_result(
                "00-summary",
                Summary(
                    title="Key results",
                    description=f"EXRM vs DPORM on the synthetic benchmark, settings "
                    f"{', '.join(settings)} (OOD = the other domains), seeds {study.seeds}.",
                    rows=rows,
                    meanings={"wall_time_s": "wall-clock seconds the study took"},
                    order=0,
                ),
            )
            report_md, report_html = run.build_report()
    return StudyResult(run, report_md, report_html, rows, outcomes, time.perf_counter() - started)


__all__ = ["StudyResult", "aggregate", "experiment_data", "model_plan", "run_study"]

"""``oodpl quickstart``: the three papers' core experiments on the synthetic benchmark, on CPU.

One run directory, one shared SFT policy, then:

- (a) :mod:`.exp_oodpl` — SFT, DPO, HPL, PPO(tr) with a MultiTask RM, and the meta-learned RM
  with meta-test ([OODPL]) on a held-out domain (every domain in turn with ``full``): PL accuracy
  and gold reward of generations at several temperatures;
- (b) :mod:`.exp_dporm` — EXRM versus DPORM, ID/OOD accuracy matrices ([DPORM]);
- (c) :mod:`.exp_more` — MultiTask versus MORE versus Top, accuracy and ECE per source ([MORE]);
  Top reuses (b)'s single-domain EXRMs.

Every number in the report comes from this run (nothing is precomputed); the gold reward of the
synthetic benchmark makes the generation quality exact. Sizes: :func:`quickstart_plan` (the
default fits a few minutes on two CPU cores; ``fast`` is a seconds-long smoke run for tests).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

from oodpl.cli.config.experiments import QuickstartConfig
from oodpl.cli.config.schema import DataConfig, DataSizes, EvalConfig, ModelConfig, RunConfig
from oodpl.cli.pipelines import exp_dporm, exp_more, exp_oodpl
from oodpl.cli.pipelines.exp_common import (
    EXPERIMENT_MEANINGS,
    ModelPlan,
    StageTracker,
    Workbench,
    cpu_threads,
    quiet_libraries,
    synthetic_data,
)
from oodpl.cli.report.results import Summary, SummaryRow
from oodpl.cli.run_dir import RunDir

EXPERIMENTS = ("oodpl", "dporm", "more")
PRESETS = ("pythia-tiny", "t5-tiny", "gemma-tiny")
EXPERIMENT_TITLES = {
    "oodpl": "(a) OODPL",
    "dporm": "(b) EXRM vs DPORM",
    "more": "(c) MultiTask vs MORE vs Top",
}


@dataclasses.dataclass(frozen=True)
class QuickstartPlan:
    """Data sizes (per domain), shared-model settings and each experiment's steps."""

    sizes: DataSizes
    model: ModelPlan
    oodpl: exp_oodpl.OodplPlan
    dporm: exp_dporm.DpormPlan
    more: exp_more.MorePlan
    held_out: tuple[str, ...] = ("kitchen",)


def quickstart_plan(*, preset: str = "pythia-tiny", fast: bool = False) -> QuickstartPlan:
    """The default plan (minutes on 2 CPU cores) or the ``fast`` smoke-test plan (seconds)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    if fast:
        return QuickstartPlan(
            sizes=DataSizes(
                fine_tuning=24, preference_train=16, eval_reference=4, eval_preference=12
            ),
            model=ModelPlan(preset=preset, vocab_size=400, batch_size=8, sft_steps=6),
            oodpl=exp_oodpl.OodplPlan(
                dpo_steps=2,
                hpl_steps=2,
                rm_steps=2,
                ppo_iterations=1,
                ppo_rollout=4,
                meta_steps=1,
                meta_batch_size=4,
                meta_inner_steps=1,
                meta_test_steps=2,
                generation_prompts=4,
                temperatures=(0.5, 1.0),
                repetitions=1,
                max_new_tokens=8,
            ),
            dporm=exp_dporm.DpormPlan(rm_steps=2, dpo_steps=2),
            more=exp_more.MorePlan(steps=2, top_steps=2),
        )
    return QuickstartPlan(
        sizes=DataSizes(
            fine_tuning=400, preference_train=300, eval_reference=48, eval_preference=200
        ),
        model=ModelPlan(preset=preset),
        oodpl=exp_oodpl.OodplPlan(),
        dporm=exp_dporm.DpormPlan(),
        more=exp_more.MorePlan(),
    )


@dataclasses.dataclass
class QuickstartResult:
    """What the command prints: the run directory, the report and the headline numbers."""

    run: RunDir
    report_md: Path
    report_html: Path
    rows: list[SummaryRow]
    times: dict[str, float]
    total_seconds: float


def run_config(
    plan: QuickstartPlan,
    *,
    output_dir: str | Path,
    seed: int,
    full: bool,
    fast: bool,
    experiments: Sequence[str],
    name: str | None = None,
) -> RunConfig:
    """The resolved config written to the run's config.yaml (what this run covered)."""
    oodpl = plan.oodpl
    return RunConfig(
        kind="quickstart",
        name=name,
        output_dir=str(output_dir),
        seed=seed,
        model=ModelConfig(
            preset=plan.model.preset,
            vocab_size=plan.model.vocab_size,
            max_length=plan.model.max_length,
        ),
        data=DataConfig(source="synthetic", sizes=plan.sizes, held_out=list(plan.held_out)),
        eval=EvalConfig(
            temperatures=list(oodpl.temperatures),
            repetitions=oodpl.repetitions,
            max_new_tokens=oodpl.max_new_tokens,
        ),
        quickstart=QuickstartConfig(experiments=list(experiments), full=full, fast=fast),
        notes="oodpl quickstart: the three papers' core experiments on the synthetic benchmark "
        "with tiny models, every number computed in this run.",
    )


def run_quickstart(
    output_dir: str | Path = "runs",
    *,
    seed: int = 0,
    full: bool = False,
    fast: bool = False,
    preset: str = "pythia-tiny",
    experiments: Sequence[str] = EXPERIMENTS,
    name: str | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    command: Sequence[str] | None = None,
) -> QuickstartResult:
    """Run the quickstart experiments and write results + report (see the module docstring)."""
    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise ValueError(f"experiments must be a non-empty subset of {EXPERIMENTS}, got {unknown}")
    started = time.perf_counter()
    plan = quickstart_plan(preset=preset, fast=fast)
    data = synthetic_data(plan.sizes, seed=seed)
    domains = list(data.domains)
    if full:
        plan = dataclasses.replace(plan, held_out=tuple(domains))
    config = run_config(
        plan,
        output_dir=output_dir,
        seed=seed,
        full=full,
        fast=fast,
        experiments=experiments,
        name=name or RunDir.default_name("quickstart"),
    )
    run = RunDir.start(config, overwrite=overwrite, command=command)
    run.describe_metrics(
        {
            f"{key}/{e}": f"{meaning} (experiment {e})"
            for key, meaning in (
                ("loss", "the stage's training objective"),
                ("policy_loss", "PPO clipped policy objective"),
                ("outer_loss", "meta-learning: L_out of the adapted policy on the query batch"),
            )
            for e in ("a", "b", "c")
        }
    )
    tracker = StageTracker(2, disable=not show_progress, title="quickstart")  # SFT, report
    if "oodpl" in experiments:
        tracker.plan(exp_oodpl.planned_stages(len(plan.held_out)))
    if "dporm" in experiments:
        tracker.plan(exp_dporm.planned_stages(len(domains)))
    if "more" in experiments:
        tracker.plan(exp_more.planned_stages(train_top="dporm" not in experiments))
    rows: list[SummaryRow] = []
    times: dict[str, float] = {}
    with tracker, cpu_threads(), quiet_libraries():
        wb = Workbench.create(
            data, plan.model, seed=seed, run=run, tracker=tracker, eval_config=EvalConfig()
        )
        clock = time.perf_counter()
        wb.sft_policy("shared")
        times["shared SFT policy"] = time.perf_counter() - clock
        sections: dict[str, object] = {}
        dporm_outcome = None
        for experiment in EXPERIMENTS:
            if experiment not in experiments:
                continue
            clock = time.perf_counter()
            if experiment == "oodpl":
                outcome = exp_oodpl.run_oodpl(wb, plan.oodpl, plan.held_out)
                sections.update(exp_oodpl.sections(outcome, plan.oodpl, wb))
                rows += exp_oodpl.summary_rows(outcome)
            elif experiment == "dporm":
                dporm_outcome = exp_dporm.run_dporm(wb, plan.dporm, domains)
                sections.update(exp_dporm.sections(dporm_outcome, plan.dporm, wb))
                rows += exp_dporm.summary_rows(dporm_outcome)
            else:
                single = dporm_outcome.reward_models if dporm_outcome else None
                more_outcome = exp_more.run_more(wb, plan.more, single_source=single)
                sections.update(exp_more.sections(more_outcome, plan.more, wb))
                rows += exp_more.summary_rows(more_outcome)
            times[EXPERIMENT_TITLES[experiment]] = time.perf_counter() - clock
        for result_name, section in sections.items():
            run.write_result(result_name, section)
        with tracker.stage("report (Markdown + HTML)"):
            total = time.perf_counter() - started
            rows += [
                SummaryRow("wall_time_s", round(seconds, 1), note=label)
                for label, seconds in times.items()
            ]
            rows.append(SummaryRow("wall_time_s", round(total, 1), note="total before the report"))
            run.write_result(
                "00-summary",
                Summary(
                    title="Key results",
                    description=f"Synthetic benchmark ({', '.join(domains)}), preset "
                    f"{plan.model.preset}, seed {seed}{' (fast sizes)' if fast else ''}. "
                    "(a) OODPL, (b) EXRM vs DPORM, (c) MultiTask vs MORE vs Top; details in "
                    "the sections below.",
                    rows=rows,
                    meanings=dict(EXPERIMENT_MEANINGS),
                    order=0,
                ),
            )
            report_md, report_html = run.build_report()
    return QuickstartResult(run, report_md, report_html, rows, times, time.perf_counter() - started)


__all__ = [
    "EXPERIMENTS",
    "PRESETS",
    "QuickstartPlan",
    "QuickstartResult",
    "quickstart_plan",
    "run_config",
    "run_quickstart",
]

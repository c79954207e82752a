"""``oodpl train KIND``: one pipeline function per run kind (METHODS §1-5).

Every kind builds its data, tokenizer and models (:mod:`.build`), evaluates the model before
training, trains with the kind's trainer from :mod:`oodpl.models.trainers` (metrics appended to
``metrics.jsonl`` step by step), saves ``checkpoints/final`` (safetensors), evaluates again and
writes ``results/*.json`` plus ``report.md``/``report.html``:

==========  =============================================  ====================================
kind        trains on                                      before/after evaluation (headline)
==========  =============================================  ====================================
sft         fine-tuning completions of all domains         NLL, PL accuracy
rm          training preferences (BT / MultiTask / MORE)   EXRM accuracy, calibration
dpo         training preferences, frozen reference         DPORM accuracy, DPO loss
hpl         training preferences, ``L_out`` directly       PL accuracy
meta        bilevel, per-domain support + query sets       adapted policies' outer loss, PL acc
meta-test   held-out fine-tuning data, frozen meta RM      PL accuracy, RWR selection loss
rjs         best-of-n samples by a trained RM, then SFT    mean RM (and gold) reward of samples
ppo         RL against a trained RM with a KL penalty      mean RM (and gold) reward of samples
==========  =============================================  ====================================

The kinds whose trainers run the engine loop with checkpoints (sft, rm, dpo, hpl; rjs with its
round and best-of-n set), ppo (engine states after rollout iterations; both
:mod:`oodpl.models.trainers.sampling_checkpoint`) and meta (its own checkpoints,
:mod:`oodpl.models.trainers.meta_checkpoint`) save a state every ``train.save_every`` steps
(ppo: iterations) and resume with ``--resume`` (:mod:`.runs`); meta-test writes no resumable
state. Evaluation runs before and after training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from oodpl.cli.config.schema import RunConfig, engine_kwargs
from oodpl.cli.errors import BadInputError
from oodpl.cli.pipelines import build as B
from oodpl.cli.pipelines.evaluate import (
    Evaluation,
    evaluate_policy,
    evaluate_reward_model,
    reference_pair_logps,
)
from oodpl.cli.pipelines.runs import RunContext, barrier, final_weights, prepare_run
from oodpl.cli.pipelines.sections import domains_label, log_evaluation, write_evaluations
from oodpl.cli.report.results import SummaryRow

RESUMABLE = ("sft", "rm", "dpo", "hpl", "meta", "rjs", "ppo")
TORCH_ONLY = ("meta",)


@dataclasses.dataclass
class Outcome:
    """What a kind's pipeline hands back for the results and report (rank 0)."""

    evaluations: list[Evaluation]
    summary: list[SummaryRow] = dataclasses.field(default_factory=list)
    generation: dict[str, Any] = dataclasses.field(default_factory=dict)
    generation_metric: str = "gold_reward"
    scorer_name: str = "gold reward"


def _evaluate(
    ctx: RunContext, fn: Callable[..., Evaluation], model: Any, label: str, step: int, **kw: Any
) -> Evaluation | None:
    """Evaluate on rank 0 (``None`` elsewhere) and log it at ``step`` (phase "eval"); the
    step-0 evaluation of a resumed run is not logged again."""
    if not ctx.is_main or model is None:
        return None
    cfg = ctx.config
    evaluation = fn(
        model, ctx.data, cfg.eval, label=label, batch_size=cfg.train.eval_batch_size, **kw
    )
    if not (step == 0 and ctx.resumed):
        log_evaluation(ctx.run, step, evaluation)
    return evaluation


def _engine(cfg: RunConfig, steps: int, **changes: Any):
    from oodpl.models.engine import EngineConfig

    return EngineConfig(**{**engine_kwargs(cfg, max_steps=steps), **changes})


def _policy_and_tokenizer(ctx: RunContext) -> tuple[Any, Any, Callable[[], Any]]:
    cfg, source = ctx.config, B.model_source(ctx.config, "policy")
    what = "train.init_from" if cfg.train.init_from else "model.path"
    tokenizer = B.build_tokenizer(cfg, ctx.data, source=source, what=what)

    def rebuild() -> Any:
        return B.build_policy(cfg, tokenizer, path=source)

    return rebuild(), tokenizer, rebuild


# ---------------------------------------------------------------------------------- the kinds
def run_sft(ctx: RunContext) -> Outcome:
    """SFT on the fine-tuning completions of every domain (METHODS §3 baseline: train+test)."""
    from oodpl.models.trainers.sft import SFTConfig, train_sft

    domains = ctx.data.domains
    ctx.data.require("fine_tuning", domains, purpose="kind sft")
    policy, _, rebuild = _policy_and_tokenizer(ctx)
    before = _evaluate(ctx, evaluate_policy, policy, "before", 0)
    records = ctx.data.records("fine_tuning", domains)
    steps = B.count_steps(ctx.config, len(records), processes=ctx.processes)
    result = train_sft(
        policy,
        records,
        SFTConfig(),
        engine=_engine(ctx.config, steps),
        max_steps=steps,
        **ctx.trainer_io(),
    )
    final = final_weights(ctx, policy, result.engine, rebuild)
    after = _evaluate(ctx, evaluate_policy, final, "after", steps)
    barrier(result.engine)
    for evaluation in (before, after):
        if evaluation is not None:
            evaluation.headline_metric = "nll"
    return Outcome([before, after])


def _reward_settings(ctx: RunContext) -> tuple[Any, int, dict[str, Any]]:
    """(RewardTrainConfig, dataset size, engine changes) for ``train.rm``."""
    from oodpl.models.trainers.reward import RewardTrainConfig

    rm, data = ctx.config.train.rm, ctx.data
    sizes = {d: len(data.preference_train[d]) for d in data.train_domains}
    objective = {"size": "bt", "uniform": "multitask", "more": "more"}[rm.source_weighting]
    if objective != "bt" and len(sizes) < 2:
        raise BadInputError(
            f"train.rm.source_weighting {rm.source_weighting!r} needs at least two training "
            f"domains, got {list(sizes)}"
        )
    if objective == "multitask" and len(set(sizes.values())) > 1:
        raise BadInputError(
            "train.rm.source_weighting 'uniform' needs equal-sized training domains (the trainer "
            f"mixes sources by size); sizes are {sizes}; use 'size' or 'more'"
        )
    config = RewardTrainConfig(
        objective=objective,
        margin=rm.margin,
        group_by="domain",
        more_momentum=rm.momentum or None,
        more_normalize=rm.normalize_gradients,
        packing=ctx.config.train.packing,
    )
    if objective == "bt":
        return config, sum(sizes.values()), {}
    return config, max(sizes.values()), {"micro_batch_size": rm.items_per_source}


def run_rm(ctx: RunContext) -> Outcome:
    """Explicit reward model: BT, MultiTask or MORE on the training preferences (§1, §5)."""
    from oodpl.models.trainers.reward import train_reward_model

    ctx.data.require("preference_train", purpose="kind rm")
    cfg = ctx.config
    tokenizer = B.build_tokenizer(cfg, ctx.data)

    def rebuild() -> Any:
        return B.build_reward_model(cfg, tokenizer, path=cfg.model.path)

    model = rebuild()
    before = _evaluate(ctx, evaluate_reward_model, model, "before", 0)
    config, n_items, changes = _reward_settings(ctx)
    batch = changes.get("micro_batch_size", cfg.train.batch_size)
    resized = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=batch))
    steps = B.count_steps(resized, n_items, processes=ctx.processes)
    result = train_reward_model(
        model,
        ctx.data.records("preference_train"),
        config,
        engine=_engine(cfg, steps, **changes),
        max_steps=steps,
        **ctx.trainer_io(),
    )
    final = final_weights(ctx, model, result.engine, rebuild)
    after = _evaluate(ctx, evaluate_reward_model, final, "after", steps)
    barrier(result.engine)
    return Outcome([before, after])


def _save_reference(ctx: RunContext, reference: Any) -> None:
    """Record the DPO reference for ``oodpl eval dpo``: its path, or a saved copy."""
    import json

    source = B.model_source(ctx.config, "policy")
    if source is None:
        reference.save_pretrained(ctx.checkpoints / "reference")
        source = str((ctx.checkpoints / "reference").resolve())
    else:
        source = str(B.resolve_model_path(source).resolve())
    (ctx.checkpoints / "reference.json").write_text(json.dumps({"reference": source}) + "\n")


def run_dpo(ctx: RunContext) -> Outcome:
    """DPO-family training against the initial policy as frozen reference (METHODS §2)."""
    from oodpl.models.trainers.dpo import DPOConfig, train_dpo

    ctx.data.require("preference_train", purpose="kind dpo")
    cfg, dpo = ctx.config, ctx.config.train.dpo
    policy, _, rebuild = _policy_and_tokenizer(ctx)
    before = references = None
    if ctx.is_main:
        reference = policy.reference_copy()
        references = reference_pair_logps(
            reference, ctx.data, cfg.eval, batch_size=cfg.train.eval_batch_size
        )
        before = _evaluate(
            ctx, evaluate_policy, policy, "before", 0, reference_logps=references, beta=dpo.beta
        )
        _save_reference(ctx, reference)
        del reference
    config = DPOConfig(
        beta=dpo.beta,
        loss_type=dpo.loss_type,
        label_smoothing=dpo.label_smoothing,
        rpo_alpha=dpo.rpo_alpha,
        reference_batch_size=cfg.train.eval_batch_size,
        reference_cache_dir=dpo.reference_cache_dir,
        packing=cfg.train.packing,
    )
    records = ctx.data.records("preference_train")
    steps = B.count_steps(cfg, len(records), processes=ctx.processes)
    result = train_dpo(
        policy,
        records,
        config,
        engine=_engine(cfg, steps),
        max_steps=steps,
        **ctx.trainer_io(),
    )
    final = final_weights(ctx, policy, result.engine, rebuild)
    after = _evaluate(
        ctx, evaluate_policy, final, "after", steps, reference_logps=references, beta=dpo.beta
    )
    barrier(result.engine)
    return Outcome([before, after])


def run_hpl(ctx: RunContext) -> Outcome:
    """HPL: the outer objective ``L_out`` minimised directly on training preferences (§3)."""
    from oodpl.models.trainers.hpl import HPLConfig, train_hpl

    ctx.data.require("preference_train", purpose="kind hpl")
    policy, _, rebuild = _policy_and_tokenizer(ctx)
    before = _evaluate(ctx, evaluate_policy, policy, "before", 0)
    records = ctx.data.records("preference_train")
    steps = B.count_steps(ctx.config, len(records), processes=ctx.processes)
    result = train_hpl(
        policy,
        records,
        HPLConfig(),
        engine=_engine(ctx.config, steps),
        max_steps=steps,
        **ctx.trainer_io(),
    )
    final = final_weights(ctx, policy, result.engine, rebuild)
    after = _evaluate(ctx, evaluate_policy, final, "after", steps)
    barrier(result.engine)
    return Outcome([before, after])


from oodpl.cli.pipelines.train_bilevel import run_meta, run_meta_test  # noqa: E402
from oodpl.cli.pipelines.train_sampling import run_ppo, run_rjs  # noqa: E402

KINDS: dict[str, Callable[[RunContext], Outcome]] = {
    "sft": run_sft,
    "rm": run_rm,
    "dpo": run_dpo,
    "hpl": run_hpl,
    "meta": run_meta,
    "meta-test": run_meta_test,
    "rjs": run_rjs,
    "ppo": run_ppo,
}


# ------------------------------------------------------------------------------------ driver
def check_run_config(config: RunConfig, *, resume: bool) -> None:
    """Bad-input checks that need no data: DeepSpeed present, torch-only kinds, resumability."""
    if config.kind in TORCH_ONLY and config.engine.backend != "torch":
        raise BadInputError(
            f"kind {config.kind} runs on the torch backend only (its hypergradient needs double "
            "backward on plain tensors); drop --deepspeed / engine.backend: deepspeed"
        )
    if resume and config.kind not in RESUMABLE:
        raise BadInputError(
            f"kind {config.kind} cannot be resumed (its trainer writes no resumable checkpoints); "
            "start it again"
        )
    B.require_deepspeed(config)
    B.check_model_paths(config)


def write_outcome(ctx: RunContext, outcome: Outcome) -> None:
    """results/*.json, metric meanings and the report (rank 0)."""
    from oodpl.cli.pipelines.evaluate import METRIC_MEANINGS
    from oodpl.cli.pipelines.sections import write_generation
    from oodpl.cli.report.glossary import meaning_of

    run, cfg = ctx.run, ctx.config
    if run is None:
        return
    evaluations = [e for e in outcome.evaluations if e is not None]
    matrix = [(domains_label(ctx.data.train_domains), evaluations[-1])] if evaluations else []
    write_evaluations(
        run,
        evaluations,
        matrix_rows=matrix,
        n_bins=cfg.eval.n_bins,
        binning=cfg.eval.binning,
        extra_rows=outcome.summary,
    )
    if outcome.generation:
        write_generation(
            run,
            outcome.generation,
            metric=outcome.generation_metric,
            scorer_name=outcome.scorer_name,
        )
    run.describe_metrics(METRIC_MEANINGS)
    reserved = {"step", "phase", "time", "epoch"}
    names = {
        k
        for r in run.read_metrics()
        for k, v in r.items()
        if k not in reserved and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    missing = sorted(n for n in names if meaning_of(n, run.metric_meanings()) is None)
    if missing:
        ctx.echo(f"note: metrics without a documented meaning: {', '.join(missing)}")
    run.build_report()


def run_training(
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
) -> tuple[Path, Outcome | None]:
    """Run a resolved config end to end; returns (run directory, outcome on rank 0 or None)."""
    check_run_config(config, resume=resume)
    ctx = prepare_run(config, B.build_data, resume=resume, overwrite=overwrite, command=command)
    ctx.echo(f"run directory: {ctx.path}")
    outcome = KINDS[config.kind](ctx)
    if ctx.is_main:
        write_outcome(ctx, outcome)
        return ctx.path, outcome
    return ctx.path, None


__all__ = ["KINDS", "RESUMABLE", "Outcome", "check_run_config", "run_training", "write_outcome"]

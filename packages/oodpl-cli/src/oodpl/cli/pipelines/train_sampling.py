"""``oodpl train rjs`` and ``oodpl train ppo``: alignment against a trained reward model.

- rjs (METHODS §5, [MORE]): sample ``train.rjs.n_samples`` responses per training-domain prompt,
  keep the reward model's best, fine-tune on it (:func:`oodpl.models.trainers.rjs.train_rjs`,
  one round of ``train.max_steps`` optimizer steps).
- ppo (METHODS §3 baselines): PPO with a KL penalty to the initial policy on training-domain
  prompts (PPO(tr)) or held-out-domain prompts (PPO(te), ``train.ppo.prompts: test``)
  (:func:`oodpl.models.trainers.ppo.train_ppo`, ``train.max_steps`` rollout iterations).

Both use the reward model of ``train.<kind>.reward_model`` (a trained ``rm`` run or checkpoint).
Evaluated before and after: responses sampled for the evaluation prompts of every domain at
``eval.temperatures`` × ``eval.repetitions``, scored by that reward model (``mean_reward``) and,
on the synthetic benchmark, by the gold reward (``mean_gold``).

Both resume with ``--resume`` (:mod:`.runs`) from engine states with their round bookkeeping
(:mod:`oodpl.models.trainers.sampling_checkpoint`): rjs saves one (weights, optimizer, schedule,
RNG, data position, its round and best-of-n set) every ``train.save_every`` optimizer steps and
at the end; ppo (policy + value head, optimizer, schedule, RNG, prompt order, iteration records)
after every ``train.save_every``-th rollout iteration and after the last. The "before"
evaluation is logged before training, so a resumed run (of the same initial policy, which is
also PPO's reference) does not log it again.
"""

from __future__ import annotations

import math
from typing import Any

from oodpl.cli.errors import BadInputError
from oodpl.cli.pipelines import build as B
from oodpl.cli.pipelines.evaluate import (
    gold_scorer,
    reward_model_scorer,
    score_generations,
)
from oodpl.cli.pipelines.runs import RunContext, barrier, final_weights
from oodpl.cli.report.results import SummaryRow


def _prompts(ctx: RunContext, domains: tuple[str, ...]) -> list[str]:
    """Distinct fine-tuning prompts of ``domains``, in order."""
    return list(dict.fromkeys(r.prompt for r in ctx.data.records("fine_tuning", domains)))


def _generation_eval(ctx: RunContext, policy: Any, reward_model: Any, label: str) -> dict:
    """``{scorer: {domain: {temperature: [means]}}}`` for the reward model and the gold reward."""
    if not ctx.is_main:
        return {}
    data, cfg = ctx.data, ctx.config
    prompts = {
        d: list(dict.fromkeys(r.prompt for r in data.eval_reference.get(d, [])))
        for d in data.domains
    }
    prompts = {d: p for d, p in prompts.items() if p}
    if not prompts:
        raise BadInputError("data: no eval_reference prompts to sample from (data.sizes)")
    scorers = {"mean_reward": reward_model_scorer(reward_model, cfg.train.eval_batch_size)}
    if data.gold is not None:
        scorers["mean_gold"] = gold_scorer(data.gold)
    out = {}
    for name, scorer in scorers.items():
        out[name] = score_generations(policy, prompts, scorer, cfg.eval, seed=cfg.seed)
    ctx.echo(
        f"{label}: " + ", ".join(f"{k} {_group_mean(ctx, v, 'id'):.4g}" for k, v in out.items())
    )
    return out


def _group_mean(ctx: RunContext, scores: dict, group: str) -> float | None:
    domains = ctx.data.train_domains if group == "id" else ctx.data.test_domains
    values = [v for d in domains for reps in scores.get(d, {}).values() for v in reps]
    return math.fsum(values) / len(values) if values else None


def _group_rows(ctx: RunContext, scores: dict) -> dict[str, float]:
    """``{"<scorer>/<id|ood>": mean}`` of one evaluation."""
    out = {}
    for name, by_domain in scores.items():
        for group in ("id", "ood"):
            value = _group_mean(ctx, by_domain, group)
            if value is not None:
                out[f"{name}/{group}"] = value
    return out


def _log_eval(ctx: RunContext, scores: dict, step: int) -> None:
    """Log an evaluation at ``step`` (phase "eval"); the step-0 ("before") evaluation of a
    resumed run is already in metrics.jsonl and is not logged again."""
    logged = _group_rows(ctx, scores)
    if ctx.run is not None and logged and not (step == 0 and ctx.resumed):
        ctx.run.log_metrics(step, logged, phase="eval")


def _outcome(ctx: RunContext, before: dict, after: dict, steps: int) -> Any:
    """Log the "after" evaluation at ``steps`` and build the run's outcome (the "before" one is
    logged when it is computed, before training)."""
    from oodpl.cli.pipelines.train import Outcome

    _log_eval(ctx, after, steps)
    rows = [
        SummaryRow(metric, value, note=label)
        for label, scores in (("before", before), ("after", after))
        for metric, value in _group_rows(ctx, scores).items()
    ]
    metric = "mean_gold" if "mean_gold" in after else "mean_reward"
    generation = {label: scores[metric] for label, scores in (("before", before), ("after", after))}
    scorer = "gold reward" if metric == "mean_gold" else "reward model"
    return Outcome(
        [], summary=rows, generation=generation, generation_metric=metric, scorer_name=scorer
    )


def _steps(ctx: RunContext, n_items: int) -> int:
    return B.count_steps(ctx.config, n_items, processes=ctx.processes)


def run_rjs(ctx: RunContext) -> Any:
    """Best-of-n by the reward model, then SFT on the kept responses (METHODS §5)."""
    from oodpl.cli.pipelines.train import _engine, _policy_and_tokenizer
    from oodpl.models.trainers._policy_common import GenerationOptions
    from oodpl.models.trainers.rjs import RJSConfig, train_rjs

    cfg, rjs = ctx.config, ctx.config.train.rjs
    ctx.data.require("fine_tuning", purpose="kind rjs (its prompts)")
    assert rjs.reward_model is not None  # required by the schema for kind rjs
    reward_model = B.load_reward_model(cfg, rjs.reward_model, "train.rjs.reward_model")
    policy, _, rebuild = _policy_and_tokenizer(ctx)
    before = _generation_eval(ctx, policy, reward_model, "before")
    _log_eval(ctx, before, 0)
    prompts = _prompts(ctx, ctx.data.train_domains)
    steps = _steps(ctx, len(prompts))
    generation = GenerationOptions(
        max_new_tokens=rjs.generation.max_new_tokens,
        temperature=rjs.generation.temperature,
        top_p=rjs.generation.top_p,
    )
    config = RJSConfig(
        n_samples=rjs.n_samples,
        steps_per_iteration=steps,
        generation=generation,
        reward_batch_size=cfg.train.eval_batch_size,
        evaluate_final=False,
        seed=cfg.seed,
    )
    with B.user_errors("kind rjs"):
        result = train_rjs(
            policy,
            reward_model,
            prompts,
            config,
            engine=_engine(cfg, steps),
            **ctx.trainer_io(),
        )
    final = final_weights(ctx, policy, result.engine, rebuild)
    after = _generation_eval(ctx, final, reward_model, "after")
    barrier(result.engine)
    return _outcome(ctx, before, after, steps)


def run_ppo(ctx: RunContext) -> Any:
    """PPO against the reward model with a KL penalty to the initial policy (METHODS §3)."""
    from oodpl.cli.pipelines.train import _engine, _policy_and_tokenizer
    from oodpl.models.trainers._policy_common import GenerationOptions
    from oodpl.models.trainers.ppo import PPOConfig, train_ppo

    cfg, ppo = ctx.config, ctx.config.train.ppo
    domains = ctx.data.train_domains if ppo.prompts == "train" else ctx.data.test_domains
    if not domains:
        raise BadInputError("train.ppo.prompts: test needs data.held_out (the test domain)")
    ctx.data.require("fine_tuning", domains, purpose="kind ppo (its prompts)")
    assert ppo.reward_model is not None  # required by the schema for kind ppo
    reward_model = B.load_reward_model(cfg, ppo.reward_model, "train.ppo.reward_model")
    policy, _, rebuild = _policy_and_tokenizer(ctx)
    before = _generation_eval(ctx, policy, reward_model, "before")
    _log_eval(ctx, before, 0)
    prompts = _prompts(ctx, domains)
    iterations = cfg.train.max_steps or max(
        1, math.ceil(cfg.train.epochs * len(prompts) / ppo.rollout_batch_size)
    )
    batch = B.global_batch_size(cfg, ctx.processes)
    steps = iterations * ppo.ppo_epochs * max(1, ppo.rollout_batch_size // batch)
    config = PPOConfig(
        iterations=iterations,
        rollout_size=ppo.rollout_batch_size,
        ppo_epochs=ppo.ppo_epochs,
        kl_coef=ppo.kl_coef,
        clip_range=ppo.clip_range,
        generation=GenerationOptions(
            max_new_tokens=ppo.generation.max_new_tokens,
            temperature=ppo.generation.temperature,
            top_p=ppo.generation.top_p,
        ),
        reward_batch_size=cfg.train.eval_batch_size,
        seed=cfg.seed,
    )
    with B.user_errors("kind ppo"):
        result = train_ppo(
            policy,
            reward_model,
            prompts,
            config,
            engine=_engine(cfg, steps),
            **ctx.trainer_io(),
        )
    final = final_weights(ctx, policy, result.engine, rebuild)
    after = _generation_eval(ctx, final, reward_model, "after")
    barrier(result.engine)
    return _outcome(ctx, before, after, iterations)


__all__ = ["run_ppo", "run_rjs"]

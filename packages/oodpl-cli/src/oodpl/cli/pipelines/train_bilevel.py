"""``oodpl train meta`` and ``oodpl train meta-test``: the OODPL bilevel method ([OODPL] Alg. 1-2,
METHODS §3).

- meta: the reward model ``r_φ`` is meta-learned through per-domain policy adaptation
  (:func:`oodpl.models.trainers.meta.train_meta`): for each training domain the policy
  ``θ_init`` (``train.init_from``, the SFT run, or a preset) takes ``K = train.meta.inner_steps``
  SGD steps of the reward-weighted regression loss on the domain's fine-tuning completions, and
  ``φ`` follows the hypergradient of the adapted policy's outer loss on the domain's training
  preferences. Evaluated before and after: the meta-objective itself, ``mean_i L_out^i(θ_i^K(φ))``
  with PL accuracy, over each training domain's whole preference set on fixed support batches
  (the trainer's ``held_out`` evaluation, given the query sets), and the reward model's own
  preference accuracy on every domain's evaluation pairs. Torch backend only. Resumable: a
  state (``φ``, outer optimiser, held-out evaluations; safetensors + JSON) is saved under
  ``checkpoints/step-XXXXXXXX`` every ``train.save_every`` outer steps and at the end, and
  ``--resume RUN_DIR`` continues from ``checkpoints/latest`` exactly as the uninterrupted run
  (:mod:`oodpl.models.trainers.meta_checkpoint`; the config must be unchanged except the step
  count).
- meta-test: the frozen ``φ*`` (``train.meta.reward_model``) weights the held-out domain's
  fine-tuning completions and the policy is trained by reward-weighted regression, keeping the
  step with the lowest selection loss (:func:`oodpl.models.trainers.meta_test.train_meta_test`).
  Evaluated before and after: PL accuracy per domain (the held-out domain is the test domain).
"""

from __future__ import annotations

from typing import Any

from oodpl.cli.errors import BadInputError
from oodpl.cli.pipelines import build as B
from oodpl.cli.pipelines.evaluate import evaluate_policy, evaluate_reward_model
from oodpl.cli.pipelines.runs import STATES_KEPT, RunContext, barrier, final_weights
from oodpl.cli.report.results import SummaryRow

STEP_KEYS_SKIPPED = ("step", "domains", "held_out")


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def meta_train_config(ctx: RunContext, steps: int) -> Any:
    """The :class:`~oodpl.models.trainers.meta.MetaTrainConfig` of ``train.meta`` + ``train``."""
    from oodpl.models.trainers.meta import MetaTrainConfig

    cfg = ctx.config
    meta, train = cfg.train.meta, cfg.train
    method = meta.implicit_solver if meta.hypergradient == "implicit" else meta.hypergradient
    options: dict[str, Any] = {
        "truncated": {"truncate": meta.truncate},
        "first_order": {"radius": meta.radius, "scheme": meta.fd_scheme},
        "neumann": {"terms": meta.implicit_terms, "damping": meta.damping},
        "cg": {"terms": meta.implicit_terms, "damping": meta.damping},
    }.get(method, {})
    return MetaTrainConfig(
        steps=steps,
        inner_steps=meta.inner_steps,
        inner_lr=meta.inner_lr,
        support_batch_size=train.batch_size,
        query_batch_size=train.batch_size,
        beta=meta.beta,
        weighting=meta.weighting,
        max_weight=meta.max_weight,
        method=method,
        method_options=options,
        outer_lr=train.lr,
        outer_optimizer=meta.outer_optimizer,
        max_grad_norm=train.max_grad_norm or None,
        domains_per_step=meta.domains_per_step or None,
        eval_every=train.eval_every,
        seed=cfg.seed,
    )


def run_meta(ctx: RunContext) -> Any:
    """Meta-train the reward model ([OODPL] Alg. 1); see the module docstring."""
    from oodpl.cli.pipelines.train import Outcome
    from oodpl.models.trainers.meta import MetaDomain, train_meta

    cfg, data = ctx.config, ctx.data
    if ctx.processes > 1:
        raise BadInputError("kind meta runs in one process (its trainer is not distributed)")
    for part in ("fine_tuning", "preference_train"):
        data.require(part, purpose="kind meta")
    tokenizer = B.build_tokenizer(cfg, data)
    reward_model = B.build_reward_model(cfg, tokenizer, path=cfg.model.path)
    source = B.model_source(cfg, "policy")
    policy_tokenizer = B.build_tokenizer(cfg, data, source=source) if source else tokenizer
    policy = B.build_policy(cfg, policy_tokenizer, path=source)
    device = _device()
    reward_model.to(device)
    policy.to(device)
    before = evaluate_reward_model(
        reward_model, data, cfg.eval, label="before", batch_size=cfg.train.eval_batch_size
    )
    run = ctx.run
    if run is not None and not ctx.resumed:  # a resumed run kept its step-0 records
        from oodpl.cli.pipelines.sections import log_evaluation

        log_evaluation(run, 0, before)
    domains = {
        d: MetaDomain(data.fine_tuning[d], data.preference_train[d]) for d in data.train_domains
    }
    objective_sets = {d: data.preference_train[d] for d in data.train_domains}
    steps = B.count_steps(cfg, max(len(d.preferences) for d in domains.values()), processes=1)

    def on_step(record: dict[str, Any]) -> None:
        if run is not None:
            values = {
                k: v
                for k, v in record.items()
                if k not in STEP_KEYS_SKIPPED and "/" not in k and isinstance(v, (int, float))
            }
            run.log_metrics(int(record["step"]), values)

    with B.user_errors("train.meta"):
        result = train_meta(
            reward_model,
            policy,
            domains,
            meta_train_config(ctx, steps),
            held_out=objective_sets,
            callback=on_step,
            checkpoint_dir=ctx.checkpoints,
            checkpoint_every=cfg.train.save_every,
            keep_last=STATES_KEPT,
            resume_from=ctx.resume_from,
        )
    logged = _held_out_steps_logged(ctx)
    for entry in result.held_out:
        if run is not None and int(entry["step"]) not in logged:
            metrics = {k: v for k, v in entry.items() if k != "step"}
            run.log_metrics(int(entry["step"]), metrics, phase="eval")
    final = final_weights(ctx, reward_model, None, lambda: None)
    after = evaluate_reward_model(
        final, data, cfg.eval, label="after", batch_size=cfg.train.eval_batch_size
    )
    if run is not None:
        from oodpl.cli.pipelines.sections import log_evaluation

        log_evaluation(run, steps, after)
    rows = []
    for entry, label in ((result.held_out[0], "before"), (result.held_out[-1], "after")):
        note = f"{label}: meta-objective, policies adapted with r_φ, on the query sets"
        rows.append(SummaryRow("outer_loss/id", entry["outer_loss"], note=note))
        rows.append(SummaryRow("pl_accuracy/id", entry["pl_accuracy"], note=note))
    return Outcome([before, after], summary=rows)


def _held_out_steps_logged(ctx: RunContext) -> set[int]:
    """Steps whose held-out (meta-objective) evaluation metrics.jsonl already holds: after a
    resume only step 0 can be there (:func:`~.runs.trim_metrics` drops later evaluations)."""
    if ctx.run is None or not ctx.resumed:
        return set()
    return {
        int(r["step"])
        for r in ctx.run.read_metrics()
        if r.get("phase") == "eval" and "outer_loss" in r and int(r.get("step", -1)) == 0
    }


def run_meta_test(ctx: RunContext) -> Any:
    """Adapt the policy to the held-out domain with the frozen meta-learned reward (Alg. 2)."""
    from oodpl.cli.pipelines.train import Outcome, _engine, _evaluate, _policy_and_tokenizer
    from oodpl.models.trainers.meta_test import MetaTestConfig, train_meta_test

    cfg, data = ctx.config, ctx.data
    if not data.test_domains:
        raise BadInputError(
            "kind meta-test needs data.held_out: the test domain whose fine-tuning data the "
            "policy is adapted on"
        )
    data.require("fine_tuning", data.test_domains, purpose="kind meta-test")
    rm_path = cfg.train.meta.reward_model
    assert rm_path is not None  # the schema requires it for meta-test
    reward_model = B.load_reward_model(cfg, rm_path, "train.meta.reward_model")
    policy, _, rebuild = _policy_and_tokenizer(ctx)
    before = _evaluate(ctx, evaluate_policy, policy, "before", 0)
    records = data.records("fine_tuning", data.test_domains)
    steps = B.count_steps(cfg, len(records), processes=ctx.processes)
    meta = cfg.train.meta
    config = MetaTestConfig(
        beta=meta.beta,
        weighting=meta.weighting,
        max_weight=meta.max_weight,
        eval_every=cfg.train.eval_every or max(1, steps // 5),
        seed=cfg.seed,
        reward_batch_size=cfg.train.eval_batch_size,
    )
    result = train_meta_test(
        policy,
        reward_model,
        records,
        config,
        engine=_engine(cfg, steps),
        max_steps=steps,
        log_path=ctx.log_path,
    )
    final = final_weights(ctx, policy, result.engine, rebuild)
    after = _evaluate(ctx, evaluate_policy, final, "after", steps)
    barrier(result.engine)
    rows = []
    if result.selection:
        rows = [
            SummaryRow("selection_loss", result.selection[0]["selection_loss"], note="step 0"),
            SummaryRow("selection_loss", result.best_loss, note=f"best, step {result.best_step}"),
        ]
    return Outcome([before, after], summary=rows)


__all__ = ["meta_train_config", "run_meta", "run_meta_test"]

"""Evaluate reward models, DPO policies and policies per domain (METHODS §1-5).

Each evaluation scores every domain's evaluation pairs ``(x, y_w, y_l)`` with the *reward the
model induces* and reports, per domain:

- reward model (EXRM, METHODS §1): ``r_φ``; ``accuracy = mean 1[r_w > r_l]``, ``bt_loss``;
- DPO policy (METHODS §2): the implicit reward ``r_dpo = β(logπ_θ − logπ_ref)`` (summed
  log-probs); ``dporm_accuracy``, ``dpo_loss`` (sigmoid, ``−mean log σ(r_w − r_l)``), plus the
  policy metrics below;
- policy (METHODS §3): the length-normalised log-likelihood ``ℓ̄ = logπ(y|x)/|y|``;
  ``pl_accuracy = mean 1[ℓ̄_w > ℓ̄_l]``, ``pl_loss = −mean log σ(ℓ̄_w − ℓ̄_l)`` and ``nll``, the
  token-level negative log-likelihood of the evaluation references;

and for that reward ``r``: calibration of ``p = σ(r_w − r_l)`` (ECE/ACE/MCE/Brier, METHODS §5,
:func:`oodpl.core.calibration.calibration_report`) and the differences ``d = r_w − r_l`` with
Tukey-fence outliers (:func:`oodpl.core.calibration.reward_difference_stats`). Domains are
in-distribution (trained on) or out-of-distribution (held out); ``<metric>/id`` and
``<metric>/ood`` are means over each group.

:func:`score_generations` samples responses at several temperatures and repetitions and scores
them with a gold reward (synthetic benchmark) or a reward model (METHODS §3 metrics).
Writing the results as report sections is :mod:`oodpl.cli.pipelines.sections`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from oodpl.cli.config.schema import EvalConfig
from oodpl.cli.pipelines.build import RunData

HEADLINE = {"rm": "accuracy", "dpo": "dporm_accuracy", "policy": "pl_accuracy"}
LOWER_IS_BETTER = {"bt_loss", "dpo_loss", "pl_loss", "nll", "ece", "ace", "mce", "brier"}
METRIC_MEANINGS = {
    "bt_loss": "Bradley–Terry loss −mean log σ(r_w − r_l) of the reward model (METHODS §1)",
    "dpo_loss": "sigmoid DPO loss −mean log σ(r_dpo(y_w) − r_dpo(y_l)) on evaluation pairs",
    "pl_loss": "policy preference loss L_out = −mean log σ(ℓ̄(y_w) − ℓ̄(y_l)) (METHODS §3)",
    "nll": "token-level negative log-likelihood of the evaluation reference answers",
    "reward_accuracy": "DPORM accuracy on the training batch (implicit reward, METHODS §2)",
    "samples": "training examples consumed so far",
    "tokens": "response tokens in the training batch",
    "mean_reward": "mean reward-model score of sampled responses",
    "mean_gold": "mean gold reward of sampled responses (synthetic benchmark)",
    "selection_loss": "meta-test: reward-weighted regression loss on a fixed selection set; the "
    "step with the lowest is kept (METHODS §3 Alg. 2)",
    "max_weight": "largest inner-loop weight w_b in the batch (METHODS §3 Eq. 10)",
    "inner_loss_first": "meta: inner loss L_in at the first inner step (before adaptation)",
    "best_reward": "RJS: mean reward-model score of the kept (best-of-n) responses",
    "n_selected": "RJS: prompts with a kept response in the round",
    "n_empty": "sampled responses that were empty (an immediate eos)",
    "iteration": "sampling round (RJS) or rollout iteration (PPO)",
    "score": "PPO: mean reward-model score of the rollout responses",
    "approx_kl": "PPO: approximate KL between the updated and the rollout policy",
    "clip_fraction": "PPO: share of response tokens whose probability ratio was clipped",
    "response_tokens": "PPO: response tokens in the rollout batch",
}


@dataclasses.dataclass
class DomainResult:
    """One domain's metrics and the induced reward of its evaluation pairs."""

    metrics: dict[str, float]
    chosen: torch.Tensor
    rejected: torch.Tensor
    calibration: Any = None  # oodpl.core.calibration.CalibrationReport
    differences: Any = None  # oodpl.core.calibration.RewardDifferenceStats


@dataclasses.dataclass
class Evaluation:
    """A model evaluated on every domain (``label`` e.g. "untrained", "trained", a path)."""

    label: str
    target: str  # "rm" | "dpo" | "policy"
    train_domains: tuple[str, ...]
    test_domains: tuple[str, ...]
    domains: dict[str, DomainResult]
    headline_metric: str | None = None

    @property
    def headline(self) -> str:
        """The metric a run of this kind is judged by (e.g. ``nll`` for SFT)."""
        return self.headline_metric or HEADLINE[self.target]

    def metric_names(self) -> list[str]:
        return list(next(iter(self.domains.values())).metrics) if self.domains else []

    def value(self, metric: str, domain: str) -> float | None:
        result = self.domains.get(domain)
        return None if result is None else result.metrics.get(metric)

    def mean(self, metric: str, group: str) -> float | None:
        """Mean of ``metric`` over the ``"id"`` (training) or ``"ood"`` (held-out) domains."""
        names = self.train_domains if group == "id" else self.test_domains
        values = [self.value(metric, d) for d in names if self.value(metric, d) is not None]
        return sum(values) / len(values) if values else None  # type: ignore[arg-type]

    def flat(self, per_domain: bool = False) -> dict[str, float]:
        """``{metric/id, metric/ood}`` (and ``metric/<domain>`` with ``per_domain``)."""
        out: dict[str, float] = {}
        for metric in self.metric_names():
            for domain in self.domains if per_domain else ():
                value = self.value(metric, domain)
                if value is not None:
                    out[f"{metric}/{domain}"] = value
            for group in ("id", "ood"):
                value = self.mean(metric, group)
                if value is not None:
                    out[f"{metric}/{group}"] = value
        return out


# ------------------------------------------------------------------------------ scoring helpers
def _batches(collator: Callable, records: Sequence[Any], size: int):
    return (collator(list(records[i : i + size])) for i in range(0, len(records), size))


def reward_pair_scores(model: Any, pairs: Sequence[Any], batch_size: int) -> tuple[Any, Any]:
    """``(r(x, y_w), r(x, y_l))`` of a reward model over ``pairs`` (eval mode, float64)."""
    out = model.compute_rewards(_batches(model.preference_collator(), pairs, batch_size))
    return out["chosen_rewards"].double(), out["rejected_rewards"].double()


def policy_pair_logps(policy: Any, pairs: Sequence[Any], batch_size: int) -> dict[str, Any]:
    """Summed log-probs and token counts of chosen/rejected responses (eval mode)."""
    return policy.compute_logps(_batches(policy.preference_collator(), pairs, batch_size))


def _finish(
    metrics: dict[str, float], chosen: Any, rejected: Any, config: EvalConfig
) -> DomainResult:
    from oodpl.core.calibration import calibration_report, reward_difference_stats

    return DomainResult(
        metrics=metrics,
        chosen=chosen,
        rejected=rejected,
        calibration=calibration_report(chosen, rejected, config.n_bins, config.binning),
        differences=reward_difference_stats(chosen, rejected),
    )


def _policy_metrics(out: Mapping[str, Any]) -> tuple[dict[str, float], Any, Any]:
    from oodpl.core.losses import length_normalized_logps, policy_preference_loss
    from oodpl.core.metrics import pl_accuracy

    args = (out["chosen_logps"], out["chosen_n_tokens"], out["rejected_logps"])
    args = (*args, out["rejected_n_tokens"])
    metrics = {
        "pl_accuracy": pl_accuracy(*args).accuracy,
        "pl_loss": float(policy_preference_loss(*(a.double() for a in args))),
    }
    chosen = length_normalized_logps(out["chosen_logps"].double(), out["chosen_n_tokens"])
    rejected = length_normalized_logps(out["rejected_logps"].double(), out["rejected_n_tokens"])
    return metrics, chosen, rejected


def _nll(policy: Any, completions: Sequence[Any], batch_size: int) -> float | None:
    if not completions:
        return None
    from oodpl.core.losses import sft_loss

    out = policy.compute_logps(_batches(policy.completion_collator(), completions, batch_size))
    return float(sft_loss(out["logps"].double(), out["n_tokens"], normalize="token"))


# ----------------------------------------------------------------------------------- evaluators
def evaluate_reward_model(
    model: Any, data: RunData, config: EvalConfig, *, label: str, batch_size: int = 16
) -> Evaluation:
    """EXRM accuracy, BT loss, calibration and reward differences per domain (METHODS §1, §5)."""
    from oodpl.core.losses import bradley_terry_loss
    from oodpl.core.metrics import preference_accuracy

    data = data.capped(config.max_examples)
    results = {}
    for domain in data.domains:
        pairs = data.eval_preference.get(domain, [])
        if not pairs:
            continue
        chosen, rejected = reward_pair_scores(model, pairs, batch_size)
        accuracy = preference_accuracy(chosen, rejected)
        metrics = {
            "accuracy": accuracy.accuracy,
            "ties": float(accuracy.n_ties),
            "bt_loss": float(bradley_terry_loss(chosen, rejected)),
        }
        results[domain] = _finish(metrics, chosen, rejected, config)
    return Evaluation(label, "rm", data.train_domains, data.test_domains, results)


def evaluate_policy(
    policy: Any,
    data: RunData,
    config: EvalConfig,
    *,
    label: str,
    batch_size: int = 16,
    reference_logps: Mapping[str, Mapping[str, Any]] | None = None,
    beta: float = 0.1,
) -> Evaluation:
    """PL accuracy, PL loss and NLL per domain; with ``reference_logps`` (from
    :func:`reference_pair_logps`) also DPORM accuracy and DPO loss, and the calibration /
    differences are those of the implicit reward ``β(logπ − logπ_ref)`` (METHODS §2-3)."""
    from oodpl.core.losses import dpo_loss
    from oodpl.core.metrics import dporm_accuracy

    data = data.capped(config.max_examples)
    results = {}
    for domain in data.domains:
        pairs = data.eval_preference.get(domain, [])
        if not pairs:
            continue
        out = policy_pair_logps(policy, pairs, batch_size)
        metrics, chosen, rejected = _policy_metrics(out)
        nll = _nll(policy, data.eval_reference.get(domain, []), batch_size)
        if nll is not None:
            metrics["nll"] = nll
        if reference_logps is not None:
            ref = reference_logps[domain]
            logps = (out["chosen_logps"].double(), out["rejected_logps"].double())
            refs = (ref["chosen_logps"].double(), ref["rejected_logps"].double())
            metrics["dporm_accuracy"] = dporm_accuracy(*logps, *refs, beta).accuracy
            loss = dpo_loss(*logps, *refs, beta=beta)
            metrics["dpo_loss"] = float(loss.loss)
            chosen, rejected = loss.chosen_rewards.double(), loss.rejected_rewards.double()
        results[domain] = _finish(metrics, chosen, rejected, config)
    target = "dpo" if reference_logps is not None else "policy"
    return Evaluation(label, target, data.train_domains, data.test_domains, results)


def reference_pair_logps(
    reference: Any, data: RunData, config: EvalConfig, *, batch_size: int = 16
) -> dict[str, dict[str, Any]]:
    """``{domain: logps}`` of the DPO reference policy on the evaluation pairs (computed once)."""
    data = data.capped(config.max_examples)
    return {
        domain: policy_pair_logps(reference, pairs, batch_size)
        for domain in data.domains
        if (pairs := data.eval_preference.get(domain, []))
    }


# ----------------------------------------------------------------------------------- generation
Scorer = Callable[[Sequence[str], Sequence[str], Sequence[str]], list[float]]


def gold_scorer(gold: Any) -> Scorer:
    """``scorer(prompts, responses, domains)`` with the synthetic benchmark's gold reward."""
    return lambda prompts, responses, domains: [
        float(v) for v in gold.score_many(list(prompts), list(responses), list(domains))
    ]


def reward_model_scorer(model: Any, batch_size: int = 16) -> Scorer:
    """``scorer(prompts, responses, domains)`` with a reward model (empty responses score " ")."""

    def score(prompts: Sequence[str], responses: Sequence[str], _domains: Sequence[str]):
        collator = model.completion_collator()
        records = [
            {"prompt": p, "response": r if r.strip() else " "}
            for p, r in zip(prompts, responses, strict=True)
        ]
        out = model.compute_rewards(_batches(collator, records, batch_size))
        return [float(v) for v in out["rewards"]]

    return score


def score_generations(
    policy: Any,
    prompts: Mapping[str, Sequence[str]],
    scorer: Scorer,
    config: EvalConfig,
    *,
    seed: int = 0,
    temperatures: Sequence[float] | None = None,
    repetitions: int | None = None,
) -> dict[str, dict[float, list[float]]]:
    """``{domain: {temperature: [mean score of repetition r]}}`` of sampled responses.

    Repetition ``r`` at temperature index ``t`` samples one response per prompt with seed
    ``seed + 1000 r + t`` (reproducible, independent across repetitions); ``"all"`` holds the
    means over every prompt of every domain.
    """
    temperatures = list(temperatures or config.temperatures)
    repetitions = repetitions or config.repetitions
    out: dict[str, dict[float, list[float]]] = {d: {} for d in [*prompts, "all"]}
    for t_index, temperature in enumerate(temperatures):
        for rep in range(repetitions):
            all_scores: list[float] = []
            for domain, domain_prompts in prompts.items():
                texts = list(domain_prompts)
                if config.max_examples:
                    texts = texts[: config.max_examples]
                if not texts:
                    continue
                responses = [
                    group[0]
                    for group in policy.generate(
                        texts,
                        max_new_tokens=config.max_new_tokens,
                        temperature=float(temperature),
                        top_p=config.top_p,
                        seed=seed + 1000 * rep + t_index,
                    )
                ]
                scores = scorer(texts, responses, [domain] * len(texts))
                all_scores.extend(scores)
                out[domain].setdefault(float(temperature), []).append(sum(scores) / len(scores))
            if all_scores:
                out["all"].setdefault(float(temperature), []).append(
                    sum(all_scores) / len(all_scores)
                )
    return {d: v for d, v in out.items() if v}


__all__ = [
    "HEADLINE",
    "LOWER_IS_BETTER",
    "METRIC_MEANINGS",
    "DomainResult",
    "Evaluation",
    "evaluate_policy",
    "evaluate_reward_model",
    "gold_scorer",
    "reference_pair_logps",
    "reward_model_scorer",
    "score_generations",
]

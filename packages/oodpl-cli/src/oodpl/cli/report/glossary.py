"""One-line meanings of every metric a report shows.

Reports print, next to each table and plot, what each metric means. :data:`METRIC_MEANINGS` holds
the built-in ones; a result file can add its own with a ``"meanings"`` object, and a run can add
meanings for custom training-curve metrics in ``metric_meanings.json``. :func:`meaning_of`
resolves prefixed names: ``eval/pl_accuracy``, ``eval_pl_accuracy``, ``lambda/book`` (the base
meaning "for book"), ``loss_std``.
"""

from __future__ import annotations

from collections.abc import Mapping

METRIC_MEANINGS: dict[str, str] = {
    # preference accuracies (METHODS §1-4)
    "preference_accuracy": "share of preference pairs whose chosen response gets the higher "
    "reward, mean 1[r(y_w) > r(y_l)]; ties count as errors (METHODS §1)",
    "accuracy": "share of pairs ranked correctly (chosen above rejected); in a reliability bin: "
    "share of the bin's predictions that are correct",
    "exrm_accuracy": "preference accuracy of the explicit reward model r_φ (METHODS §1)",
    "dporm_accuracy": "share of pairs where the DPO implicit reward β(log π − log π_ref) ranks "
    "the chosen response higher (METHODS §2)",
    "pl_accuracy": "share of pairs where the policy's length-normalised log-likelihood prefers "
    "the chosen response, mean 1[ℓ̄(y_w) > ℓ̄(y_l)] (METHODS §3)",
    "id_accuracy": "preference accuracy on the in-distribution (training) domain",
    "ood_accuracy": "preference accuracy on an out-of-distribution (held-out) domain",
    "mean_ood_accuracy": "mean preference accuracy over the out-of-distribution domains",
    "accuracy_drop": "in-distribution accuracy minus mean out-of-distribution accuracy",
    "exrm_win_share": "share of runs where the explicit RM beats the DPO implicit RM (METHODS §4)",
    "ties": "pairs whose two responses get exactly equal scores",
    # calibration (METHODS §5)
    "ece": "expected calibration error Σ_bins |Σp − Σy| / N over both orientations of every pair, "
    "p = σ(r_w − r_l); 0 = perfectly calibrated (METHODS §5)",
    "ace": "average calibration error: mean |confidence − accuracy| over non-empty bins",
    "mce": "maximum calibration error: largest |confidence − accuracy| over non-empty bins",
    "brier": "Brier score: mean (p − y)² over both orientations of every pair; lower is better",
    "confidence": "mean predicted probability p = σ(r_w − r_l) of the predictions in a bin",
    # reward differences (METHODS §5)
    "reward_difference": "d = r(x, y_w) − r(x, y_l) per pair; > 0 means the reward model "
    "prefers the chosen response",
    "n": "number of items the statistic is computed over",
    "mean": "arithmetic mean",
    "std": "standard deviation",
    "median": "median (50th percentile)",
    "q1": "first quartile (25th percentile)",
    "q3": "third quartile (75th percentile)",
    "iqr": "interquartile range Q3 − Q1",
    "n_positive_outliers": "count of differences above the Tukey fence Q3 + 1.5·IQR",
    "n_negative_outliers": "count of differences below the Tukey fence Q1 − 1.5·IQR",
    "mean_positive_outlier": "mean of the differences above Q3 + 1.5·IQR",
    "mean_negative_outlier": "mean of the differences below Q1 − 1.5·IQR",
    # generation quality (METHODS §3)
    "gold_reward": "gold reward of sampled generations (the synthetic benchmark's gold function "
    "or a held-out gold RM); higher is better; median and spread over repetitions",
    "win_rate": "share of LLM-judge comparisons the model's answer wins against the reference "
    "(position-swapped; disagreeing verdicts count as ties, ties count half)",
    "kendall_tau": "Kendall rank correlation τ between two rankings, in [−1, 1]",
    "ranking_consistency": "(τ + 1) / 2: agreement of two rankings in [0, 1] (CREAM)",
    # training curves
    "loss": "the trainer's training objective (lower is better)",
    "eval_loss": "the training objective on the evaluation data",
    "lr": "learning rate at this step",
    "learning_rate": "learning rate at this step",
    "grad_norm": "l2 norm of the gradient before clipping",
    "epoch": "fractional pass over the training data",
    "step": "optimizer step",
    "reward_margin": "mean of r_w − r_l over the batch",
    "margin": "mean of the DPO log-ratio margin h over the batch (METHODS §2)",
    "chosen_reward": "mean (implicit) reward of chosen responses in the batch",
    "rejected_reward": "mean (implicit) reward of rejected responses in the batch",
    "inner_loss": "weighted fine-tuning loss L_in of the adapted policy (METHODS §3 Eq. 10)",
    "outer_loss": "Bradley–Terry loss L_out of the adapted policy on preferences (Eq. 6-7)",
    "hypergrad_norm": "l2 norm of the hypergradient dL_out/dφ (METHODS §3)",
    "weight_entropy": "entropy of the inner-loop weights w_b (low = few samples dominate)",
    "lambda": "MORE source weight λ_i on the simplex (METHODS §5)",
    "kl": "KL divergence of the policy from the reference policy",
    "policy_loss": "PPO clipped policy objective",
    "value_loss": "PPO value-function loss",
    "tokens_per_second": "training throughput in tokens per second",
    "seconds": "wall-clock seconds",
}

_PREFIXES = ("train_", "eval_", "val_", "test_", "mean_", "final_")


def meaning_of(name: str, extra: Mapping[str, str] | None = None) -> str | None:
    """The one-line meaning of a metric, or ``None`` if it is undocumented.

    Looks in ``extra`` first, then the built-in glossary, stripping ``phase/`` and ``eval_``-style
    prefixes and ``_std`` suffixes; ``base/detail`` resolves to ``base``'s meaning "for detail".
    """
    table = {**METRIC_MEANINGS, **(extra or {})}
    if name in table:
        return table[name]
    if "/" in name:
        head, _, tail = name.partition("/")
        found = meaning_of(tail, extra)
        if found:
            return found if head in ("train", "eval", "val", "test") else f"{found} ({head})"
        found = meaning_of(head, extra)
        if found:
            return f"{found}, for {tail}"
    if name.endswith("_std"):
        found = meaning_of(name[: -len("_std")], extra)
        if found:
            return f"standard deviation of: {found}"
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            found = meaning_of(name[len(prefix) :], extra)
            if found:
                return found
    return None

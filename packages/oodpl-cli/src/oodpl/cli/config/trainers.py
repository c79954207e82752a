"""Trainer-specific config sections: ``train.rm``, ``train.dpo``, ``train.meta``, ``train.ppo``,
``train.rjs`` (formulas in METHODS.md §1-5)."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from oodpl.cli.config.fields import doc

Problems = list[tuple[str, str]]


@dataclasses.dataclass
class RewardModelTraining:
    """Reward-model training (Bradley–Terry, METHODS §1; multi-source MORE, §5)."""

    margin: float = field(default=0.0, metadata=doc("margin m in -log σ(r_w - r_l - m)"))
    source_weighting: Literal["size", "uniform", "more"] = field(
        default="size",
        metadata=doc("mixing of sources: by size (MultiTask), uniform, or MORE min-norm weights"),
    )
    momentum: float = field(
        default=0.0, metadata=doc("MORE gradient momentum a (0 = none)", ge=0, le=1)
    )
    normalize_gradients: bool = field(
        default=True, metadata=doc("MORE: l2-normalise per-source gradients")
    )
    items_per_source: int = field(
        default=16, metadata=doc("MORE: items per source in each batch", ge=1)
    )
    group_by: Literal["source", "domain"] = field(
        default="source",
        metadata=doc("MultiTask/MORE: the record field naming the K sources (source or domain)"),
    )


@dataclasses.dataclass
class DPOTraining:
    """DPO family (METHODS §2)."""

    beta: float = field(
        default=0.1, metadata=doc("β of the implicit reward β(log π - log π_ref)", gt=0)
    )
    loss_type: Literal["sigmoid", "label_smoothed", "robust", "ipo", "hinge"] = field(
        default="sigmoid", metadata=doc("DPO loss variant")
    )
    label_smoothing: float = field(
        default=0.0, metadata=doc("ε of label-smoothed / robust DPO", ge=0, le=0.5)
    )
    rpo_alpha: float = field(
        default=0.0, metadata=doc("weight α of the RPO NLL term on chosen responses", ge=0)
    )
    reference_cache_dir: str | None = field(
        default=None,
        metadata=doc(
            "directory caching reference log-probs on disk (keyed by model, data, tokenizer), "
            "reused by later runs"
        ),
    )

    def problems(self) -> Problems:
        if self.loss_type == "robust" and self.label_smoothing >= 0.5:
            return [("label_smoothing", "robust DPO needs label_smoothing (flip rate) < 0.5")]
        return []


@dataclasses.dataclass
class MetaTraining:
    """OODPL bilevel meta-training and meta-test ([OODPL] Alg. 1-2, METHODS §3)."""

    inner_lr: float = field(default=0.001, metadata=doc("inner SGD step size α", gt=0))
    inner_steps: int = field(default=3, metadata=doc("inner steps K per domain", ge=1))
    beta: float = field(
        default=1.0, metadata=doc("reward controlling factor β in w = B·softmax(r/β)", gt=0)
    )
    weighting: Literal["softmax", "clipped_exp"] = field(
        default="softmax",
        metadata=doc("inner weights: self-normalised softmax or min(exp(r/β), max_weight)"),
    )
    max_weight: float = field(default=20.0, metadata=doc("clip w_max of clipped_exp weights", gt=0))
    hypergradient: Literal["unrolled", "truncated", "first_order", "implicit"] = field(
        default="unrolled", metadata=doc("hypergradient method (METHODS §3 variants)")
    )
    truncate: int = field(
        default=1, metadata=doc("truncated: number of last inner steps differentiated", ge=1)
    )
    radius: float = field(
        default=0.01,
        metadata=doc(
            "first_order: finite-difference radius R (step R/‖v‖); model-dependent, measure it "
            "with benchmarks/first_order_accuracy.py",
            gt=0,
        ),
    )
    fd_scheme: Literal["central", "forward"] = field(
        default="central",
        metadata=doc(
            "first_order: central differences at θ±εv (two gradients per step, error O(R²)) or "
            "forward differences against the inner loop's gradients (one, error O(R))"
        ),
    )
    implicit_solver: Literal["neumann", "cg"] = field(
        default="neumann", metadata=doc("implicit: H⁻¹v solver")
    )
    implicit_terms: int = field(
        default=10, metadata=doc("implicit: Neumann terms / CG iterations", ge=1)
    )
    damping: float = field(default=0.0, metadata=doc("implicit: damping λ in H + λI", ge=0))
    domains_per_step: int = field(
        default=0, metadata=doc("domains sampled per outer step; 0 = all", ge=0)
    )
    outer_optimizer: Literal["sgd", "adam"] = field(default="sgd", metadata=doc("optimizer of φ"))
    reward_model: str | None = field(
        default=None, metadata=doc("meta-test: trained reward model φ* directory")
    )


@dataclasses.dataclass
class GenerationConfig:
    """Sampling settings for generation."""

    temperature: float = field(default=1.0, metadata=doc("sampling temperature", gt=0))
    top_p: float = field(default=1.0, metadata=doc("nucleus sampling mass", gt=0, le=1))
    max_new_tokens: int = field(default=64, metadata=doc("maximum generated tokens", ge=1))


@dataclasses.dataclass
class PPOTraining:
    """PPO baseline with a multi-task reward model (METHODS §3 baselines)."""

    reward_model: str | None = field(default=None, metadata=doc("trained reward model directory"))
    prompts: Literal["train", "test"] = field(
        default="train", metadata=doc("RL prompts: PPO(tr) or PPO(te)")
    )
    kl_coef: float = field(
        default=0.05, metadata=doc("KL penalty coefficient to the reference policy", ge=0)
    )
    clip_range: float = field(default=0.2, metadata=doc("PPO ratio clip ε", gt=0))
    ppo_epochs: int = field(default=4, metadata=doc("optimisation epochs per rollout batch", ge=1))
    rollout_batch_size: int = field(default=16, metadata=doc("prompts per rollout", ge=1))
    generation: GenerationConfig = field(
        default_factory=GenerationConfig, metadata=doc("rollout sampling")
    )


@dataclasses.dataclass
class RJSTraining:
    """Rejection-sampling alignment: best of n by the reward model, then SFT (METHODS §5)."""

    reward_model: str | None = field(default=None, metadata=doc("trained reward model directory"))
    n_samples: int = field(default=4, metadata=doc("responses sampled per prompt", ge=2))
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata=doc("sampling"))

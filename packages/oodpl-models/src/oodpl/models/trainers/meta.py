"""OODPL meta-trainer: a reward model learned through per-domain policy adaptation
([OODPL] Alg. 1, METHODS §3).

Parameters: ``φ`` = the reward model's trainable parameters (LoRA adapter + value head, or the
value head only), ``θ`` = the policy's trainable parameters (LoRA [+ LM head]). Each outer step,
for every sampled training domain ``i``:

1. reset ``θ_i^0 = θ_init`` (the SFT policy's trainable parameters, as passed in);
2. ``K`` SGD steps ``θ^{k+1} = θ^k − α ∇_θ L_in(θ^k; φ)`` on support minibatches of the domain's
   fine-tuning completions, with the reward-weighted regression loss ([OODPL] Eq. 8–10)
   ``L_in(θ; φ) = −(1/B) Σ_b w_b(φ) ℓ̄_θ(x_b, y_b)``, ``w = B·softmax(r_φ(x, y)/β)`` (or
   ``min(exp(r/β), w_max)``), the weights differentiable in ``φ``;
3. ``g_i = dL_out^i(θ_i^K(φ))/dφ`` on a query minibatch of the domain's preferences, with
   ``L_out(θ) = −mean log σ(ℓ̄_θ(y_w) − ℓ̄_θ(y_l))`` ([OODPL] Eq. 6–7, 11), by the hypergradient
   ``method`` of :mod:`oodpl.core.hypergrad` (unrolled | truncated | first_order | neumann | cg);

then ``φ`` takes one step of the outer optimiser (SGD as in the paper, or Adam) on ``mean_i g_i``.
The loop itself is :func:`oodpl.core.bilevel.meta_train`; the pure callables are
:class:`~oodpl.models.trainers.meta_objective.BilevelObjective` (built on
:meth:`Policy.functional_sequence_logps` and :meth:`RewardModel.functional_rewards`); this module
supplies the configuration, the data streams and the held-out evaluation.

**Resumable.** With ``checkpoint_dir`` the trainer saves ``φ``, the outer optimiser's state and
the held-out evaluations every ``checkpoint_every`` outer steps and after the last one
(``step-XXXXXXXX/`` plus ``latest``, safetensors + JSON, written atomically;
:mod:`~oodpl.models.trainers.meta_checkpoint`); ``resume_from`` loads such a state into the reward
model, checks that the run's settings and data match the saved fingerprint, and continues with
:class:`oodpl.core.bilevel.MetaResume`, which replays the domain sampler and the data streams
over the skipped steps, so the resumed run continues exactly as the uninterrupted one.

**Torch backend only.** The hypergradient needs functional calls and double backward on plain
parameter tensors, which DeepSpeed's partitioned/wrapped parameters do not offer: a config with
``backend="deepspeed"`` raises ``ValueError``. Both models run in eval mode (dropout off) so that
``L_out(θ^K(φ))`` is a deterministic function of ``φ``. Exact second-order products through
fused attention kernels fail (CUDA's efficient/cuDNN kernels, and with torch 2.13 also CPU's
flash kernel): the hypergradient restricts SDPA to its math kernel only where it builds a
gradient with ``create_graph=True`` (one inner step at a time; the inner steps, the outer
gradient and the reward pull-backs keep the fused kernels), and by default
(``attn_implementation="auto"``) the second-order methods switch flash/flex kernels, which do
not go through SDPA, to ``"eager"`` (METHODS §3). ``first_order`` keeps the models' kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from oodpl.core.bilevel import DomainData, MetaStepRecord, meta_train
from oodpl.core.hypergrad import METHODS
from oodpl.core.losses import (
    RWR_WEIGHTINGS,
)
from oodpl.core.records import Completion, Preference
from oodpl.models.engine.loop import JsonlLogger
from oodpl.models.lora import detached_copy
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.trainers._policy_common import (
    CollateOptions,
    check_choice,
    check_int,
    check_number,
    check_policy,
    check_records,
)
from oodpl.models.trainers.meta_checkpoint import MetaCheckpoints, meta_fingerprint
from oodpl.models.trainers.meta_evaluation import HeldOutEvaluator
from oodpl.models.trainers.meta_objective import (
    BilevelObjective,
    adapt_policy_parameters,
    minibatches,
)

Params = dict[str, torch.Tensor]
SECOND_ORDER_METHODS = ("unrolled", "truncated", "neumann", "cg")
REWARD_PARAMETERS = ("all", "value_head")
OUTER_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class MetaDomain:
    """A training domain: fine-tuning completions ``F_i`` (support) and preferences ``P_i``
    (query)."""

    fine_tuning: Sequence[Completion]
    preferences: Sequence[Preference]


@dataclass(frozen=True)
class MetaTrainConfig(CollateOptions):
    """Settings of :func:`train_meta` (defaults are small-scale starting points; the paper picks
    ``α``, ``β`` and ``K`` from small grids on development runs).

    Attributes:
        steps: outer steps ``T`` (100).
        inner_steps: inner SGD steps ``K`` per domain (2).
        inner_lr: inner step size ``α`` (0.05; plain SGD on LoRA + LM head diverges much above
            0.1 on the tiny presets).
        support_batch_size, query_batch_size: minibatch sizes for ``L_in`` / ``L_out`` (8, 16).
        beta: reward controlling factor ``β`` of the weights (1.0; larger = flatter).
        weighting: ``"softmax"`` (self-normalised) or ``"clipped_exp"``; max_weight: its clip.
        method: hypergradient method (``"unrolled"``); method_options: its options
            (``truncate``, ``radius``, ``terms``, ``damping``, ...).
        outer_optimizer: ``"adam"`` (default) or ``"sgd"`` (as in the paper; hypergradient norms
            are small, so SGD needs a much larger ``outer_lr``); outer_lr: its step size (1e-2);
            max_grad_norm: clip of ``‖mean_i g_i‖`` (None = no clip).
        domains_per_step: domains sampled per outer step (None = all).
        reward_parameters: ``"all"`` (the RM's trainable parameters: LoRA + value head) or
            ``"value_head"``.
        attn_implementation: ``"auto"`` (second-order methods: eager instead of flash/flex
            kernels; SDPA stays, its math kernel is used only inside the hypergradient's
            double-backward steps), ``None`` (leave attention alone) or a kernel name applied
            to both models.
        eval_every: evaluate the held-out objective every this many outer steps (0 = only
            before and after training, when held-out data is given).
        reward_jacobian: give the hypergradient per-sample Jacobians of the support rewards
            (``∂r_φ(x_i, y_i)/∂φ`` by one forward + backward with per-sample weight gradients,
            :mod:`oodpl.models.per_sample_grads`) so that its reverse pass needs no reward-model
            pass (True; used where ``φ`` holds only ``nn.Linear`` weights/biases and
            ``B·|φ| ≤ |θ|``, otherwise the vector-Jacobian path; results equal to round-off).
        pack_queries: collate query batches packed (prefix-shared: each pair's prompt runs
            once) when the policy can run packed batches and packing saves enough
            (``packing="auto"`` of the trainers); False = padded (True).
        seed: seed of the data order and of the domain sampling.
        backend: must be ``"torch"`` (the meta-trainer is torch-only).
    """

    steps: int = 100
    inner_steps: int = 2
    inner_lr: float = 0.05
    support_batch_size: int = 8
    query_batch_size: int = 16
    beta: float = 1.0
    weighting: str = "softmax"
    max_weight: float = 20.0
    method: str = "unrolled"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    outer_lr: float = 1e-2
    outer_optimizer: str = "adam"
    max_grad_norm: float | None = None
    domains_per_step: int | None = None
    reward_parameters: str = "all"
    attn_implementation: str | None = "auto"
    eval_every: int = 0
    reward_jacobian: bool = True
    pack_queries: bool = True
    seed: int = 0
    backend: str = "torch"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.backend != "torch":
            raise ValueError(
                f"{name}.backend={self.backend!r}: the meta-trainer is torch-only (its "
                "hypergradient needs functional calls and double backward on plain tensors, "
                "which DeepSpeed-wrapped parameters do not support); use backend='torch'"
            )
        check_int(self.steps, f"{name}.steps", minimum=0)
        check_int(self.inner_steps, f"{name}.inner_steps", minimum=1)
        check_int(self.support_batch_size, f"{name}.support_batch_size", minimum=1)
        check_int(self.query_batch_size, f"{name}.query_batch_size", minimum=1)
        check_int(self.eval_every, f"{name}.eval_every", minimum=0)
        check_int(self.seed, f"{name}.seed", minimum=0)
        for key in ("reward_jacobian", "pack_queries"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"{name}.{key} must be a bool, got {getattr(self, key)!r}")
        for key in ("inner_lr", "beta", "max_weight", "outer_lr"):
            check_number(getattr(self, key), f"{name}.{key}", minimum=0.0, strict=True)
        if self.max_grad_norm is not None:
            check_number(self.max_grad_norm, f"{name}.max_grad_norm", minimum=0.0, strict=True)
        if self.domains_per_step is not None:
            check_int(self.domains_per_step, f"{name}.domains_per_step", minimum=1)
        check_choice(self.weighting, f"{name}.weighting", RWR_WEIGHTINGS)
        check_choice(self.method, f"{name}.method", METHODS)
        check_choice(self.outer_optimizer, f"{name}.outer_optimizer", OUTER_OPTIMIZERS)
        check_choice(self.reward_parameters, f"{name}.reward_parameters", REWARD_PARAMETERS)
        if not isinstance(self.method_options, Mapping):
            raise TypeError(f"{name}.method_options must be a mapping")
        self.collator_overrides()


@dataclass
class MetaTrainerResult:
    """What :func:`train_meta` returns.

    Attributes:
        reward_model: the meta-trained reward model (the object passed in, updated in place).
        history: one dict per outer step: ``step``, ``inner_loss`` (mean over domains of the
            last inner loss), ``inner_loss_first``, ``outer_loss`` (query minibatch),
            ``hypergrad_norm`` (of ``mean_i g_i``), ``domains`` and per-domain values.
        held_out: ``{"step", "outer_loss", "pl_accuracy"}`` of the adapted policies on held-out
            preferences (mean over domains), at step 0, every ``eval_every`` steps and the end.
        last_checkpoint: the last state written (``checkpoint_dir``), if any.
    """

    reward_model: RewardModel
    history: list[dict[str, Any]] = field(default_factory=list)
    held_out: list[dict[str, float]] = field(default_factory=list)
    last_checkpoint: Path | None = None

    def series(self, key: str) -> list[float]:
        return [float(r[key]) for r in self.history if key in r]


def _reward_parameters(reward_model: RewardModel, which: str) -> Params:
    params = reward_model.trainable_parameters()
    if which == "value_head":
        params = {k: v for k, v in params.items() if k.startswith("value_head.")}
    if not params:
        raise ValueError(f"reward_model has no trainable parameters for {which!r}")
    return params


def _check_domains(domains: object) -> dict[str, MetaDomain]:
    if not isinstance(domains, Mapping) or not domains:
        raise ValueError("domains must be a non-empty mapping: domain name -> MetaDomain")
    out = {}
    for name, domain in domains.items():
        if not isinstance(domain, MetaDomain):
            raise TypeError(f"domains[{name!r}] must be a MetaDomain, got {type(domain).__name__}")
        check_records(domain.fine_tuning, Completion, f"domains[{name!r}].fine_tuning")
        check_records(domain.preferences, Preference, f"domains[{name!r}].preferences")
        out[str(name)] = domain
    return out


def _set_attention(config: MetaTrainConfig, *models: Any) -> None:
    """Make attention twice differentiable for the second-order methods (METHODS §3).

    ``"auto"``: models on a kernel other than ``"sdpa"``/``"eager"`` (flash, flex) switch to
    ``"eager"``; SDPA models keep SDPA, which :mod:`oodpl.core.hypergrad` restricts to its math
    kernel (composite ops: double backward works on CPU and GPU, and a float64 model stays
    float64 — GPT-NeoX's and Gemma's eager attention take the softmax in float32) only inside
    the steps it differentiates twice. A kernel name sets both models to it.
    """
    choice = config.attn_implementation
    second_order = config.method in SECOND_ORDER_METHODS
    if choice == "auto":
        for model in models:
            kernel = getattr(model.lm.config, "_attn_implementation", None)
            if second_order and kernel not in ("sdpa", "eager"):
                model.set_attn_implementation("eager")
    elif choice is not None:
        for model in models:
            model.set_attn_implementation(choice)


def _step_record(record: MetaStepRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "step": record.step + 1,
        "inner_loss": record.inner_loss,
        "outer_loss": record.outer_loss,
        "hypergrad_norm": record.hypergrad_norm,
        "domains": list(record.domains),
    }
    first = [d["inner_loss_first"] for d in record.per_domain.values()]
    out["inner_loss_first"] = math.fsum(first) / len(first)
    for name, values in record.per_domain.items():
        for key, value in values.items():
            out[f"{name}/{key}"] = value
    return out


def train_meta(
    reward_model: RewardModel,
    policy: Policy,
    domains: Mapping[str, MetaDomain],
    config: MetaTrainConfig | None = None,
    *,
    held_out: Mapping[str, Sequence[Preference]] | None = None,
    log_path: str | Path | None = None,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_last: int | None = None,
    resume_from: str | Path | None = None,
) -> MetaTrainerResult:
    """Meta-train ``reward_model`` (in place) by [OODPL] Alg. 1 (see the module docstring).

    Args:
        reward_model: ``r_φ``; its selected trainable parameters are ``φ``.
        policy: the SFT policy; its trainable parameters are ``θ_init`` (never modified).
        domains: training domains by name, each a :class:`MetaDomain`.
        config: :class:`MetaTrainConfig` (torch backend only).
        held_out: optional held-out preferences per training domain; the adapted policies'
            ``L_out`` and PL accuracy on them are evaluated (see ``MetaTrainerResult.held_out``).
        log_path: append one JSONL record per outer step (and per held-out evaluation, with
            ``"held_out": true``).
        callback: called with each step's record; returning ``True`` stops training.
        checkpoint_dir, checkpoint_every, keep_last: save a state (``φ``, outer optimiser,
            held-out evaluations) as ``checkpoint_dir/step-XXXXXXXX`` every ``checkpoint_every``
            outer steps and after the last (``0``: only after the last), point
            ``checkpoint_dir/latest`` at it, keep the newest ``keep_last`` states (as
            :func:`oodpl.models.engine.loop.train`).
        resume_from: a state directory or a checkpoint root with ``latest``: ``φ`` is loaded into
            ``reward_model`` and training continues after the saved step exactly as the
            uninterrupted run (same ``domains``, ``policy`` and config except ``steps``, which
            may grow, and ``eval_every``; the settings are checked against the saved
            fingerprint, a mismatch raises ``ValueError`` naming the field). The held-out
            evaluations before the saved step are taken from the state and not logged again;
            ``log_path`` is appended to. Skipped steps' batches are still drawn (collated) to
            advance the data streams.
    """
    if not isinstance(reward_model, RewardModel):
        kind = type(reward_model).__name__
        raise TypeError(f"reward_model must be an oodpl.models.RewardModel, got {kind}")
    policy = check_policy(policy)
    config = config or MetaTrainConfig()
    if not isinstance(config, MetaTrainConfig):
        raise TypeError(f"config must be a MetaTrainConfig, got {type(config).__name__}")
    checked = _check_domains(domains)
    if reward_model.device != policy.device:
        raise ValueError(
            f"reward_model is on {reward_model.device} but policy on {policy.device}: "
            "move both to one device"
        )
    _set_attention(config, policy, reward_model)
    objective = BilevelObjective(policy, reward_model, config)
    theta_init = detached_copy(policy.trainable_parameters(), requires_grad=False)
    phi = _reward_parameters(reward_model, config.reward_parameters)
    sizes = {n: (len(d.fine_tuning), len(d.preferences)) for n, d in checked.items()}
    checkpoints = MetaCheckpoints(
        meta_fingerprint(config, sizes, phi),
        config.steps,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
    )
    logger = JsonlLogger(log_path) if log_path is not None else None
    result = MetaTrainerResult(reward_model)
    resume = checkpoints.restore(resume_from, phi, result.held_out if held_out else None)
    evaluator = (
        HeldOutEvaluator(objective, checked, held_out, theta_init, config) if held_out else None
    )

    def evaluate(step: int) -> None:
        if evaluator is None:
            return
        entry = evaluator(phi, step)
        result.held_out.append(entry)
        if logger is not None:
            logger({**entry, "held_out": True})

    def stream(records: Sequence[Any], collate: Callable, size: int, offset: int) -> Callable:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + offset)

        def factory() -> Iterator[Any]:
            return (collate(batch) for batch in minibatches(records, size, generator))

        return factory

    data = {
        name: DomainData(
            support=stream(
                domain.fine_tuning, objective.support_batch, config.support_batch_size, 2 * index
            ),
            query=stream(
                domain.preferences, objective.query_batch, config.query_batch_size, 2 * index + 1
            ),
        )
        for index, (name, domain) in enumerate(checked.items())
    }

    def on_step(record: MetaStepRecord) -> bool:
        entry = _step_record(record)
        result.history.append(entry)
        if logger is not None:
            logger(entry)
        step = entry["step"]
        if config.eval_every and step % config.eval_every == 0 and step < config.steps:
            evaluate(step)
        checkpoints.after_step(step, phi, result.held_out)
        return bool(callback(entry)) if callback is not None else False

    optimizer_class = torch.optim.SGD if config.outer_optimizer == "sgd" else torch.optim.Adam
    modes = (policy.training, reward_model.training)
    policy.eval()
    reward_model.eval()
    try:
        if resume is None:
            evaluate(0)
        meta_train(
            objective.inner_loss,
            objective.outer_loss,
            theta_init,
            phi,
            data,
            steps=config.steps,
            inner_steps=config.inner_steps,
            inner_lr=config.inner_lr,
            method=config.method,
            method_options=dict(config.method_options),
            outer_optimizer=checkpoints.optimizer(
                lambda params: optimizer_class(params, lr=config.outer_lr)
            ),
            domains_per_step=config.domains_per_step,
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            callback=on_step,
            resume=resume,
        )
        last = result.history[-1]["step"] if result.history else (resume.step if resume else 0)
        if last and (not result.held_out or result.held_out[-1]["step"] != last):
            evaluate(last)
    finally:
        policy.train(modes[0])
        reward_model.train(modes[1])
    result.last_checkpoint = checkpoints.last_checkpoint
    return result


__all__ = [
    "BilevelObjective",
    "MetaDomain",
    "MetaTrainConfig",
    "MetaTrainerResult",
    "adapt_policy_parameters",
    "minibatches",
    "train_meta",
]

"""Meta-training ([OODPL] Alg. 1) and meta-test ([OODPL] Alg. 2) of the reward model (METHODS §3).

Model-agnostic: the loop only sees the pure callables ``inner_loss(theta, phi, batch)`` (the paper's
reward-weighted regression, Eq. 8–10) and ``outer_loss(theta, batch)`` (Bradley–Terry on the
adapted policy, Eq. 6–7, 11) and parameter dicts. Meta objective::

    min_φ Σ_i L_out^i(θ_i^K(φ))  with  θ_i^{k+1} = θ_i^k − α ∇_θ L_in^i(θ_i^k; φ), θ_i^0 = θ_init.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from oodpl.core.hypergrad._autodiff import scalar_loss
from oodpl.core.hypergrad._params import (
    Params,
    all_finite,
    check_int,
    check_params,
    check_positive,
    clone,
    detach,
    norm,
)
from oodpl.core.hypergrad.dispatch import METHODS, hypergradient

__all__ = [
    "DomainData",
    "MetaResume",
    "MetaStepRecord",
    "MetaTestResult",
    "MetaTrainResult",
    "meta_test",
    "meta_train",
]

BatchSource = Callable[[], Iterable[Any]] | Iterable[Any]
OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]


@dataclass(frozen=True)
class DomainData:
    """One training domain: ``support`` = fine-tuning minibatches (for ``L_in``), ``query`` =
    preference minibatches (for ``L_out``).

    Each may be a zero-argument factory returning a fresh iterable (restarted when exhausted), a
    re-iterable collection such as a list (cycled), or a one-shot iterator (an error when it
    runs out).
    """

    support: BatchSource
    query: BatchSource


class _BatchStream:
    """Endless stream of batches from a factory, a re-iterable, or a one-shot iterator."""

    def __init__(self, source: BatchSource, name: str) -> None:
        self.name = name
        if isinstance(source, Iterator):
            self.factory: Callable[[], Iterable[Any]] | None = None
            self.iterator: Iterator[Any] = source
        elif callable(source):
            self.factory = source
            self.iterator = iter(source())
        elif isinstance(source, Iterable) and not isinstance(source, (str, bytes, Tensor)):
            self.factory = lambda: source  # type: ignore[assignment,return-value]
            self.iterator = iter(source)
        else:
            raise TypeError(
                f"{name} must be an iterable of batches or a factory returning one, "
                f"got {type(source).__name__}"
            )

    def next(self) -> Any:
        try:
            return next(self.iterator)
        except StopIteration:
            if self.factory is None:
                raise ValueError(
                    f"{self.name} ran out of batches; pass a list or a factory "
                    "(zero-argument callable) so it can be restarted"
                ) from None
        self.iterator = iter(self.factory())
        try:
            return next(self.iterator)
        except StopIteration:
            raise ValueError(f"{self.name} yields no batches") from None

    def take(self, count: int) -> list[Any]:
        return [self.next() for _ in range(count)]


@dataclass(frozen=True)
class MetaStepRecord:
    """Diagnostics of one outer step: means over the sampled domains plus per-domain values.

    ``inner_loss`` is the mean of the last recorded inner loss ``L_in(θ^{K-1})`` (the loss at the
    iterate before the final inner step), ``outer_loss`` the mean of ``L_out(θ^K)``,
    ``hypergrad_norm`` the norm of the mean hypergradient before clipping. ``per_domain[name]``
    holds ``inner_loss_first``, ``inner_loss_last``, ``outer_loss`` and ``hypergrad_norm``.
    """

    step: int
    domains: list[str]
    inner_loss: float
    outer_loss: float
    hypergrad_norm: float
    per_domain: dict[str, dict[str, float]]


@dataclass
class MetaTrainResult:
    """``phi`` (the same tensors that were passed, updated in place) and the per-step history."""

    phi: Params
    history: list[MetaStepRecord] = field(default_factory=list)

    @property
    def outer_losses(self) -> list[float]:
        return [r.outer_loss for r in self.history]

    @property
    def inner_losses(self) -> list[float]:
        return [r.inner_loss for r in self.history]

    @property
    def hypergrad_norms(self) -> list[float]:
        return [r.hypergrad_norm for r in self.history]


@dataclass(frozen=True)
class MetaResume:
    """Where a resumed :func:`meta_train` run continues: after ``step`` completed outer steps.

    ``optimizer_state`` is the outer optimiser's ``state_dict()`` saved after that step (loaded
    into the freshly built optimiser; ``None`` keeps it fresh, which is exact only for a
    stateless optimiser such as plain SGD). The caller restores ``phi`` itself.
    """

    step: int
    optimizer_state: Mapping[str, Any] | None = None


def _default_sgd(lr: float) -> OptimizerFactory:
    return lambda params: torch.optim.SGD(params, lr=lr)


def _check_domains(domains: object) -> dict[str, tuple[_BatchStream, _BatchStream]]:
    if not isinstance(domains, Mapping) or len(domains) == 0:
        raise ValueError("domains must be a non-empty mapping from domain name to DomainData")
    streams = {}
    for name, data in domains.items():
        if isinstance(data, DomainData):
            support, query = data.support, data.query
        elif isinstance(data, Sequence) and len(data) == 2 and not isinstance(data, str):
            support, query = data
        else:
            raise TypeError(
                f"domains[{name!r}] must be DomainData(support, query) or a (support, query) pair, "
                f"got {type(data).__name__}"
            )
        streams[str(name)] = (
            _BatchStream(support, f"domains[{name!r}].support"),
            _BatchStream(query, f"domains[{name!r}].query"),
        )
    return streams


def _check_phi_leaves(phi: Params) -> None:
    for key, value in phi.items():
        if not value.is_leaf:
            raise ValueError(
                f"phi[{key!r}] must be a leaf tensor (e.g. an nn.Parameter or a plain tensor): "
                "meta_train updates phi in place with a torch.optim optimiser"
            )


def meta_train(
    inner_loss: Callable[[Params, Params, Any], Tensor],
    outer_loss: Callable[[Params, Any], Tensor],
    theta_init: Params,
    phi: Params,
    domains: Mapping[str, DomainData | tuple[BatchSource, BatchSource]],
    *,
    steps: int,
    inner_steps: int,
    inner_lr: float,
    method: str = "unrolled",
    method_options: Mapping[str, Any] | None = None,
    outer_lr: float = 1e-3,
    outer_optimizer: OptimizerFactory | None = None,
    domains_per_step: int | None = None,
    max_grad_norm: float | None = None,
    seed: int = 0,
    callback: Callable[[MetaStepRecord], bool | None] | None = None,
    resume: MetaResume | None = None,
) -> MetaTrainResult:
    """Meta-train the shared reward parameters ``phi`` ([OODPL] Alg. 1).

    Each outer step samples ``domains_per_step`` domains (all by default, without replacement,
    seeded by ``seed``); for each domain ``i``: reset ``θ_i^0 = θ_init``, take ``inner_steps``
    SGD steps with step size ``inner_lr`` on the domain's next support minibatches, compute
    ``g_i = dL_out^i(θ_i^K)/dφ`` on its next query minibatch with ``hypergradient(method=...)``,
    then update ``φ`` with ``mean_i g_i`` (optionally clipped to ``max_grad_norm``) by the outer
    optimiser (``outer_optimizer(list_of_phi_tensors)``; default ``SGD(lr=outer_lr)`` as in the
    paper). ``phi`` is updated **in place**. ``callback(record)`` runs after every step; returning
    ``True`` stops training early.

    ``resume=MetaResume(step, optimizer_state)`` continues an interrupted run: ``phi`` must
    already hold the values saved after outer step ``step`` (``0 <= step <= steps``). The run then
    goes on exactly as if steps ``0 .. step-1`` had run in this process: the domain sampler's
    draws of those steps are replayed, every chosen domain's support stream is advanced by
    ``inner_steps`` batches and its query stream by one batch per skipped step (so the data order
    is identical), the outer optimiser is loaded from ``optimizer_state``, and steps
    ``step .. steps-1`` run, their records carrying the true step index. Replay cost: the skipped
    batches are still drawn (built, e.g. collated) from the streams, though no loss is evaluated.
    """
    theta = clone(check_params(theta_init, "theta_init"))
    phi_checked = check_params(phi, "phi")
    _check_phi_leaves(phi_checked)
    for name, fn in (("inner_loss", inner_loss), ("outer_loss", outer_loss)):
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    streams = _check_domains(domains)
    total_steps = check_int(steps, "steps", minimum=0)
    k_steps = check_int(inner_steps, "inner_steps", minimum=1)
    alpha = check_positive(inner_lr, "inner_lr")
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    per_step = len(streams) if domains_per_step is None else domains_per_step
    check_int(per_step, "domains_per_step", minimum=1)
    if per_step > len(streams):
        raise ValueError(f"domains_per_step must be <= {len(streams)} domains, got {per_step}")
    clip = None if max_grad_norm is None else check_positive(max_grad_norm, "max_grad_norm")
    if outer_optimizer is None:
        outer_optimizer = _default_sgd(check_positive(outer_lr, "outer_lr"))
    elif not callable(outer_optimizer):
        raise TypeError(
            "outer_optimizer must be a factory: list of tensors -> torch.optim.Optimizer"
        )
    start = _check_resume(resume, total_steps)
    optimizer = outer_optimizer(list(phi_checked.values()))
    if resume is not None and resume.optimizer_state is not None:
        _load_optimizer_state(optimizer, resume.optimizer_state)
    options = dict(method_options or {})
    names = list(streams)
    generator = torch.Generator().manual_seed(seed)
    result = MetaTrainResult(phi=phi_checked)

    def sample_domains() -> list[str]:
        order = torch.randperm(len(names), generator=generator)[:per_step].tolist()
        return [names[i] for i in sorted(order)]

    for _ in range(start):  # replay the skipped steps' draws (resume)
        for name in sample_domains():
            support, query = streams[name]
            support.take(k_steps)
            query.next()

    for step in range(start, total_steps):
        chosen = sample_domains()
        grads: list[Params] = []
        per_domain: dict[str, dict[str, float]] = {}
        for name in chosen:
            support, query = streams[name]
            support_batches, query_batch = support.take(k_steps), query.next()
            res = hypergradient(
                inner_loss,
                outer_loss,
                theta,
                detach(phi_checked),
                support_batches,
                query_batch,
                lr=alpha,
                method=method,
                **options,
            )
            grads.append(res.grad)
            per_domain[name] = {
                "inner_loss_first": res.inner_losses[0],
                "inner_loss_last": res.inner_losses[-1],
                "outer_loss": res.outer_loss,
                "hypergrad_norm": res.grad_norm,
            }
        mean_grad = {k: sum(g[k] for g in grads) / len(grads) for k in phi_checked}
        if not all_finite(mean_grad):
            raise FloatingPointError(f"non-finite hypergradient at outer step {step} ({chosen})")
        grad_norm = float(norm(mean_grad))
        if clip is not None and grad_norm > clip:
            mean_grad = {k: g * (clip / grad_norm) for k, g in mean_grad.items()}
        optimizer.zero_grad(set_to_none=True)
        for key, tensor in phi_checked.items():
            tensor.grad = mean_grad[key].to(tensor.dtype)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record = MetaStepRecord(
            step=step,
            domains=chosen,
            inner_loss=_mean(d["inner_loss_last"] for d in per_domain.values()),
            outer_loss=_mean(d["outer_loss"] for d in per_domain.values()),
            hypergrad_norm=grad_norm,
            per_domain=per_domain,
        )
        result.history.append(record)
        if callback is not None and callback(record):
            break
    return result


def _check_resume(resume: object, total_steps: int) -> int:
    """The first outer step to run: ``resume.step`` (validated) or 0."""
    if resume is None:
        return 0
    if not isinstance(resume, MetaResume):
        raise TypeError(f"resume must be a MetaResume or None, got {type(resume).__name__}")
    start = check_int(resume.step, "resume.step", minimum=0)
    if start > total_steps:
        raise ValueError(f"resume.step must be <= steps={total_steps}, got {start}")
    if resume.optimizer_state is not None and not isinstance(resume.optimizer_state, Mapping):
        kind = type(resume.optimizer_state).__name__
        raise TypeError(f"resume.optimizer_state must be an optimizer state_dict, got {kind}")
    return start


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load ``state`` into ``optimizer``; ``ValueError`` naming ``resume.optimizer_state`` when it
    was written by another optimiser class (other hyper-parameter names) or for other tensors."""
    count = sum(len(group["params"]) for group in optimizer.param_groups)
    what = f"{type(optimizer).__name__} over {count}"
    try:
        groups = list(state["param_groups"])
        for saved, live in zip(groups, optimizer.param_groups, strict=False):
            if set(saved) != set(live):
                missing = sorted(set(live) ^ set(saved))
                raise ValueError(f"its parameter group keys differ in {missing}")
        optimizer.load_state_dict(dict(state))
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"resume.optimizer_state does not fit the outer optimizer ({what} phi tensors): {err}"
        ) from None


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return math.fsum(items) / len(items)


@dataclass(frozen=True)
class MetaTestResult:
    """The selected policy parameters and the training-loss curve of meta-test."""

    theta: Params
    best_step: int
    best_loss: float
    losses: list[float]
    selection_losses: list[float]


def meta_test(
    inner_loss: Callable[[Params, Params, Any], Tensor],
    theta_init: Params,
    phi: Params,
    support: BatchSource,
    *,
    steps: int,
    lr: float,
    optimizer: Callable[[list[Tensor], float], torch.optim.Optimizer] | None = None,
    selection_batches: Sequence[Any] | None = None,
    eval_every: int = 1,
) -> MetaTestResult:
    """Adapt a policy on the test domain with the frozen reward ([OODPL] Alg. 2).

    From ``θ_init`` (the SFT policy) minimise ``L_in^test(θ; φ*)`` for ``steps`` optimiser steps
    on minibatches from ``support`` (``optimizer(params, lr)``; default plain SGD) and return the
    iterate with the lowest training loss. The candidates ``θ_0 .. θ_steps`` are scored every
    ``eval_every`` steps: by the mean of ``L_in`` over ``selection_batches`` when given, else
    by the loss on the minibatch drawn for that step (``θ_steps`` on one extra minibatch).
    ``losses[t]`` is the minibatch loss at ``θ_t`` before step ``t``.
    """
    if not callable(inner_loss):
        raise TypeError(f"inner_loss must be callable, got {type(inner_loss).__name__}")
    total = check_int(steps, "steps", minimum=0)
    rate = check_positive(lr, "lr")
    every = check_int(eval_every, "eval_every", minimum=1)
    frozen = detach(check_params(phi, "phi"))
    start = check_params(theta_init, "theta_init")
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in start.items()}
    stream = _BatchStream(support, "support")
    selection = None if selection_batches is None else list(selection_batches)
    if selection is not None and not selection:
        raise ValueError("selection_batches must hold at least one batch when given")
    factory = optimizer or (lambda params, lr: torch.optim.SGD(params, lr=lr))
    opt = factory(list(theta.values()), rate)

    def loss_at(batch: Any, where: str) -> Tensor:
        return scalar_loss(inner_loss(theta, frozen, batch), "inner_loss", where)

    def selection_score() -> float:
        assert selection is not None
        with torch.no_grad():
            return _mean(float(loss_at(b, "selection_batches")) for b in selection)

    best_loss, best_step, best_theta = math.inf, 0, clone(theta)
    losses: list[float] = []
    scores: list[float] = []
    for step in range(total + 1):
        scored = step % every == 0 or step == total
        loss: Tensor | None = None
        score = math.nan
        if step < total:
            with torch.enable_grad():
                loss = loss_at(stream.next(), f"meta-test step {step}")
            losses.append(float(loss.detach()))
            score = losses[-1]
        elif selection is None:
            with torch.no_grad():
                score = float(loss_at(stream.next(), "meta-test, final iterate"))
        if scored:
            if selection is not None:
                score = selection_score()
            scores.append(score)
            if score < best_loss:
                best_loss, best_step, best_theta = score, step, clone(theta)
        if loss is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not all_finite(theta):
                raise FloatingPointError(
                    f"policy parameters became non-finite at meta-test step {step}"
                )
    return MetaTestResult(best_theta, best_step, best_loss, losses, scores)

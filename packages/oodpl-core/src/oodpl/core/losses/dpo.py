"""The DPO family and the implicit reward it induces (METHODS §2, [DPORM]).

Implicit reward (read this before recomputing rewards after training)
--------------------------------------------------------------------
DPO's implicit reward of a response is ::

    r_dpo(x, y) = β · (logπ_θ(y|x) − logπ_ref(y|x))

where

- ``logπ_θ(y|x)`` and ``logπ_ref(y|x)`` are **summed** log-probabilities of the response tokens
  (prompt and padding tokens excluded), **not** length-normalised: a response of 40 tokens
  contributes the sum of 40 token log-probs;
- ``π_ref`` is the *frozen reference model* the policy was trained against — normally the SFT
  policy the DPO run started from, never the current policy;
- ``β`` is the same ``beta`` passed to :func:`dpo_loss` during training.

:class:`DPOOutput` logs exactly ``implicit_reward(policy_logps, reference_logps, beta)`` for the
chosen and the rejected responses, so recomputing the implicit rewards after training with the
trained policy, the same reference model, the same ``beta`` and summed log-probs reproduces the
training logs (and the DPORM accuracy, METHODS §2) up to floating-point noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from oodpl.core._validation import (
    check_choice,
    check_in_interval,
    check_non_negative,
    check_positive,
    check_same_shape,
    check_tensor,
    check_token_counts,
)
from oodpl.core.losses._reduction import check_reduction, reduce_losses

__all__ = ["DPO_LOSS_TYPES", "DPOOutput", "dpo_loss", "implicit_reward"]

#: Loss types accepted by :func:`dpo_loss` (METHODS §2).
DPO_LOSS_TYPES: tuple[str, ...] = ("sigmoid", "label_smoothed", "robust", "ipo", "hinge")


@dataclass(frozen=True)
class DPOOutput:
    """Result of :func:`dpo_loss`.

    Attributes:
        loss: the reduced loss (``losses`` itself when ``reduction="none"``); carries the graph.
        losses: per-pair losses ``[B]`` including the RPO term; carries the graph.
        chosen_rewards: implicit rewards ``β(logπ_θ(y_w) − logπ_ref(y_w))`` ``[B]``, detached.
        rejected_rewards: implicit rewards ``β(logπ_θ(y_l) − logπ_ref(y_l))`` ``[B]``, detached.
        margins: ``chosen_rewards − rejected_rewards`` ``[B]`` (this is ``h`` of METHODS §2),
            detached.
    """

    loss: Tensor
    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    margins: Tensor


def implicit_reward(policy_logps: Tensor, reference_logps: Tensor, beta: float) -> Tensor:
    """DPO's implicit reward ``r_dpo = β(logπ_θ(y|x) − logπ_ref(y|x))`` (METHODS §2, [DPORM]).

    Both log-probabilities are **summed** over the response tokens (not length-normalised) and
    ``π_ref`` is the frozen reference model used during DPO training; see the module docstring.
    Not detached: differentiable w.r.t. ``policy_logps``.

    Raises:
        ValueError naming the argument for mismatched shapes, empty or non-finite inputs, or
        ``beta <= 0``.
    """
    check_tensor("policy_logps", policy_logps)
    check_tensor("reference_logps", reference_logps)
    check_same_shape(policy_logps=policy_logps, reference_logps=reference_logps)
    beta = check_positive("beta", beta)
    return beta * (policy_logps - reference_logps)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    rpo_alpha: float = 0.0,
    chosen_n_tokens: Tensor | None = None,
    reduction: str = "mean",
) -> DPOOutput:
    """DPO-family preference loss on summed response log-probabilities (METHODS §2).

    With ``u = (logπ_θ(y_w) − logπ_ref(y_w)) − (logπ_θ(y_l) − logπ_ref(y_l))`` and ``h = β·u``,
    the per-pair loss ``ℓ`` is, by ``loss_type``:

    - ``"sigmoid"`` (DPO): ``−log σ(h)``
    - ``"label_smoothed"`` (cDPO, ε = ``label_smoothing`` ∈ [0, 1]):
      ``−(1−ε) log σ(h) − ε log σ(−h)``; ε = 0 gives ``"sigmoid"``. For CREAM (METHODS §6) use
      ``ε = 1 − C`` with ``C`` the ranking consistency.
    - ``"robust"`` (rDPO, flip rate ε ∈ [0, ½)):
      ``[−(1−ε) log σ(h) + ε log σ(−h)] / (1 − 2ε)``, an unbiased estimate of the clean sigmoid
      loss under label flips with probability ε: ``(1−ε)ℓ(h) + εℓ(−h) = −log σ(h)``; ε = 0 gives
      ``"sigmoid"``.
    - ``"ipo"``: ``(h/β − 1/(2β))² = (u − 1/(2β))²`` (on summed log-probs, as written in METHODS).
    - ``"hinge"`` (SLiC): ``max(0, 1 − h)``.

    RPO: with ``rpo_alpha = α > 0`` every pair adds ``α · (−logπ_θ(y_w)/|y_w|)`` (length-normalised
    NLL of the chosen response; ``chosen_n_tokens`` = ``|y_w|`` is then required), so the mean loss
    is ``mean ℓ + α · mean(−policy_chosen_logps/chosen_n_tokens)``. ``α = 0`` gives the base loss.

    Closed-form gradients (reduction="mean", batch size B), with ``g = dℓ/dh``:
    ``∂L/∂logπ_θ(y_w) = β g/B − α/(|y_w| B)``, ``∂L/∂logπ_θ(y_l) = −β g/B``, and the reference
    log-probs get the opposite sign of the policy ones (without the RPO term). ``g`` is
    ``−σ(−h)`` (sigmoid), ``−(1−ε)σ(−h) + εσ(h)`` (label_smoothed),
    ``[−(1−ε)σ(−h) − εσ(h)]/(1−2ε)`` (robust), ``2(u − 1/(2β))/β`` (ipo), ``−1[h < 1]`` (hinge).

    Args:
        policy_chosen_logps, policy_rejected_logps: summed log-probs of ``y_w`` / ``y_l`` under
            the policy, ``[B]``.
        reference_chosen_logps, reference_rejected_logps: the same under the frozen reference
            model, ``[B]`` (gradients, if any, flow through them too; detach them yourself).
        beta: ``β > 0``.
        loss_type: one of :data:`DPO_LOSS_TYPES`.
        label_smoothing: ε; must be 0 unless ``loss_type`` is ``"label_smoothed"`` ([0, 1]) or
            ``"robust"`` ([0, ½)).
        rpo_alpha: ``α >= 0``.
        chosen_n_tokens: ``|y_w|`` per pair ``[B]`` (> 0); required when ``rpo_alpha > 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        :class:`DPOOutput` with the loss and the detached implicit rewards
        (:func:`implicit_reward`) of the chosen and rejected responses and their margins.

    Raises:
        ValueError naming the argument for mismatched shapes, empty batches, NaN/inf log-probs,
        ``beta <= 0``, an unknown ``loss_type`` / ``reduction``, ``label_smoothing`` out of range
        (``>= 1/2`` for robust) or set for a loss type that ignores it, ``rpo_alpha < 0``,
        ``chosen_n_tokens`` missing (with ``rpo_alpha > 0``) or ``<= 0``.
    """
    logps = {
        "policy_chosen_logps": policy_chosen_logps,
        "policy_rejected_logps": policy_rejected_logps,
        "reference_chosen_logps": reference_chosen_logps,
        "reference_rejected_logps": reference_rejected_logps,
    }
    for name, value in logps.items():
        check_tensor(name, value)
    check_same_shape(**logps)
    beta = check_positive("beta", beta)
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    check_reduction(reduction)
    epsilon = _check_label_smoothing(label_smoothing, loss_type)
    rpo_alpha = check_non_negative("rpo_alpha", rpo_alpha)
    if chosen_n_tokens is not None:
        check_token_counts("chosen_n_tokens", chosen_n_tokens)
        check_same_shape(policy_chosen_logps=policy_chosen_logps, chosen_n_tokens=chosen_n_tokens)
    elif rpo_alpha > 0:
        raise ValueError(
            "chosen_n_tokens is required when rpo_alpha > 0 "
            "(the RPO term is the length-normalised NLL of the chosen response)"
        )

    chosen_logratios = policy_chosen_logps - reference_chosen_logps
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    u = chosen_logratios - rejected_logratios
    h = beta * u
    losses = _base_losses(loss_type, h, u, beta, epsilon)
    if rpo_alpha > 0:
        assert chosen_n_tokens is not None
        nll = -policy_chosen_logps / chosen_n_tokens.to(policy_chosen_logps.dtype)
        losses = losses + rpo_alpha * nll

    chosen_rewards = (beta * chosen_logratios).detach()
    rejected_rewards = (beta * rejected_logratios).detach()
    return DPOOutput(
        loss=reduce_losses(losses, reduction),
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        margins=chosen_rewards - rejected_rewards,
    )


def _check_label_smoothing(label_smoothing: object, loss_type: str) -> float:
    if loss_type == "label_smoothed":
        return check_in_interval("label_smoothing", label_smoothing, 0.0, 1.0)
    if loss_type == "robust":
        return check_in_interval("label_smoothing", label_smoothing, 0.0, 0.5, high_closed=False)
    epsilon = check_non_negative("label_smoothing", label_smoothing)
    if epsilon != 0.0:
        raise ValueError(
            f"label_smoothing={epsilon} has no effect with loss_type={loss_type!r}; "
            "use loss_type='label_smoothed' or 'robust', or leave label_smoothing at 0"
        )
    return epsilon


def _base_losses(loss_type: str, h: Tensor, u: Tensor, beta: float, epsilon: float) -> Tensor:
    if loss_type == "sigmoid":
        return -F.logsigmoid(h)
    if loss_type == "label_smoothed":
        return -(1.0 - epsilon) * F.logsigmoid(h) - epsilon * F.logsigmoid(-h)
    if loss_type == "robust":
        return (-(1.0 - epsilon) * F.logsigmoid(h) + epsilon * F.logsigmoid(-h)) / (
            1.0 - 2.0 * epsilon
        )
    if loss_type == "ipo":
        return (u - 1.0 / (2.0 * beta)) ** 2
    return torch.relu(1.0 - h)  # hinge

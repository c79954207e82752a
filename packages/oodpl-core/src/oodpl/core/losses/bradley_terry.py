"""Bradley–Terry loss of an explicit reward model (EXRM), METHODS §1."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from oodpl.core._validation import check_real, check_same_shape, check_tensor
from oodpl.core.losses._reduction import check_reduction, reduce_losses

__all__ = ["bradley_terry_loss"]


def bradley_terry_loss(
    chosen_rewards: Tensor,
    rejected_rewards: Tensor,
    margin: float | Tensor = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Bradley–Terry negative log-likelihood of the observed preferences (METHODS §1)::

        ℓ_b = −log σ(r_w,b − r_l,b − m_b)          L_BT = mean_b ℓ_b   (reduction="mean")

    Args:
        chosen_rewards: ``r_w``, shape ``[B]``, floating point, finite.
        rejected_rewards: ``r_l``, shape ``[B]``.
        margin: ``m``, a finite float or a ``[B]`` tensor of per-pair margins (e.g. a preference
            strength); ``0`` gives the plain BT loss. The pair must be won by more than ``m``.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-pair ``[B]``).

    Computed as ``-F.logsigmoid(Δ − m)``, which is exact for large ``|Δ|`` (no ``log(0)``).
    Gradient: ``∂L/∂r_w,b = −σ(−(Δ_b − m_b))/B = −∂L/∂r_l,b`` for ``reduction="mean"``.

    Raises:
        TypeError / ValueError naming the argument for non-tensors, mismatched shapes, empty
        batches, NaN/inf values or an unknown ``reduction``.
    """
    check_tensor("chosen_rewards", chosen_rewards)
    check_tensor("rejected_rewards", rejected_rewards)
    check_same_shape(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    check_reduction(reduction)
    if isinstance(margin, Tensor):
        check_tensor("margin", margin, ndim=None)
        if margin.ndim != 0:
            check_same_shape(chosen_rewards=chosen_rewards, margin=margin)
    else:
        margin = check_real("margin", margin)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - margin)
    return reduce_losses(losses, reduction)

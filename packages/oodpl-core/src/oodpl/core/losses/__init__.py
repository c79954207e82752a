"""Preference-learning losses on plain tensors (rewards, summed log-probs, token counts).

- :func:`bradley_terry_loss` — explicit reward model (METHODS §1).
- :func:`dpo_loss`, :class:`DPOOutput`, :data:`DPO_LOSS_TYPES`, :func:`implicit_reward` — the DPO
  family and its implicit reward (METHODS §2; implicit rewards use *summed* log-probs and the frozen
  reference model, see :mod:`oodpl.core.losses.dpo`).
- :func:`policy_preference_loss` — OODPL outer objective ([OODPL] Eq. 6–7).
- :func:`reward_weighted_regression_loss`, :func:`reward_weights` — OODPL inner objective
  ([OODPL] Eq. 10).
- :func:`sft_loss`, :func:`length_normalized_logps`.

Every function validates its inputs and raises ``ValueError``/``TypeError`` naming the argument.
"""

from oodpl.core.losses._reduction import REDUCTIONS
from oodpl.core.losses.bradley_terry import bradley_terry_loss
from oodpl.core.losses.dpo import DPO_LOSS_TYPES, DPOOutput, dpo_loss, implicit_reward
from oodpl.core.losses.policy import (
    RWR_WEIGHTINGS,
    SFT_NORMALIZATIONS,
    length_normalized_logps,
    policy_preference_loss,
    reward_weighted_regression_loss,
    reward_weights,
    sft_loss,
)

__all__ = [
    "DPO_LOSS_TYPES",
    "REDUCTIONS",
    "RWR_WEIGHTINGS",
    "SFT_NORMALIZATIONS",
    "DPOOutput",
    "bradley_terry_loss",
    "dpo_loss",
    "implicit_reward",
    "length_normalized_logps",
    "policy_preference_loss",
    "reward_weighted_regression_loss",
    "reward_weights",
    "sft_loss",
]

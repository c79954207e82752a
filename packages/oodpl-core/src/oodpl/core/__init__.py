"""oodpl-core: the torch-only heart of oodpl.

Pure functions of tensors and parameter dicts, no model objects:

- :mod:`oodpl.core.losses` — Bradley–Terry, the DPO family, policy preference loss
  ([OODPL] Eq. 6–7), reward-weighted regression ([OODPL] Eq. 10), SFT;
- :mod:`oodpl.core.metrics` — preference, PL and DPORM accuracy, Kendall-τ consistency;
- :mod:`oodpl.core.calibration` — ECE/ACE/MCE, reliability tables, Brier, reward differences;
- :mod:`oodpl.core.moo` — MORE min-norm reweighting;
- :mod:`oodpl.core.hypergrad` — unrolled, truncated, first-order and implicit hypergradients;
- :mod:`oodpl.core.bilevel` — meta-training and meta-test loops ([OODPL] Alg. 1–2);
- :mod:`oodpl.core.records` — the ``Preference`` / ``Completion`` records every package shares;
- :mod:`oodpl.core.testing` — finite-difference checks to run on your own losses.

Public names load lazily: `oodpl.core.records` alone imports no torch; everything else loads
torch and nothing else from the ML ecosystem (tested).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = (
    "bilevel",
    "calibration",
    "hypergrad",
    "losses",
    "metrics",
    "moo",
    "records",
    "testing",
)

# Public name -> submodule that defines it. Loaded lazily (PEP 562) so that importing a
# torch-free piece such as ``oodpl.core.records`` does not pay for importing torch.
_EXPORTS = {
    "CalibrationReport": "calibration",
    "calibration_report": "calibration",
    "expected_calibration_error": "calibration",
    "reward_difference_stats": "calibration",
    "HypergradResult": "hypergrad",
    "hypergradient": "hypergrad",
    "DPOOutput": "losses",
    "bradley_terry_loss": "losses",
    "dpo_loss": "losses",
    "implicit_reward": "losses",
    "policy_preference_loss": "losses",
    "reward_weighted_regression_loss": "losses",
    "sft_loss": "losses",
    "AccuracyResult": "metrics",
    "dporm_accuracy": "metrics",
    "kendall_tau": "metrics",
    "pl_accuracy": "metrics",
    "preference_accuracy": "metrics",
    "ranking_consistency": "metrics",
    "GradientMomentum": "moo",
    "min_norm_weights": "moo",
    "more_loss": "moo",
    "Completion": "records",
    "Preference": "records",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"oodpl.core.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"oodpl.core.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'oodpl.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES, *_EXPORTS])


if TYPE_CHECKING:
    from oodpl.core import bilevel, calibration, hypergrad, losses, metrics, moo, records, testing
    from oodpl.core.calibration import (
        CalibrationReport,
        calibration_report,
        expected_calibration_error,
        reward_difference_stats,
    )
    from oodpl.core.hypergrad import HypergradResult, hypergradient
    from oodpl.core.losses import (
        DPOOutput,
        bradley_terry_loss,
        dpo_loss,
        implicit_reward,
        policy_preference_loss,
        reward_weighted_regression_loss,
        sft_loss,
    )
    from oodpl.core.metrics import (
        AccuracyResult,
        dporm_accuracy,
        kendall_tau,
        pl_accuracy,
        preference_accuracy,
        ranking_consistency,
    )
    from oodpl.core.moo import GradientMomentum, min_norm_weights, more_loss
    from oodpl.core.records import Completion, Preference


__all__ = [
    "AccuracyResult",
    "CalibrationReport",
    "Completion",
    "DPOOutput",
    "GradientMomentum",
    "HypergradResult",
    "Preference",
    "__version__",
    "bilevel",
    "bradley_terry_loss",
    "calibration",
    "calibration_report",
    "dpo_loss",
    "dporm_accuracy",
    "expected_calibration_error",
    "hypergrad",
    "hypergradient",
    "implicit_reward",
    "kendall_tau",
    "losses",
    "metrics",
    "min_norm_weights",
    "moo",
    "more_loss",
    "pl_accuracy",
    "policy_preference_loss",
    "preference_accuracy",
    "ranking_consistency",
    "records",
    "reward_difference_stats",
    "reward_weighted_regression_loss",
    "sft_loss",
    "testing",
]

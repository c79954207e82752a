"""Held-out evaluation of the OODPL meta-trainer: the adapted policy ``θ^K(φ)`` of every training
domain, scored on that domain's held-out preferences by ``L_out`` ([OODPL] Eq. 6–7) and PL
accuracy (METHODS §3 metrics), with support batches fixed once so that evaluations at different
outer steps differ only through ``φ``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from oodpl.core.losses import policy_preference_loss
from oodpl.core.metrics import pl_accuracy
from oodpl.core.records import Preference
from oodpl.models.trainers._policy_common import check_records
from oodpl.models.trainers.meta_objective import (
    BilevelObjective,
    adapt_policy_parameters,
    minibatches,
)

if TYPE_CHECKING:
    from oodpl.models.trainers.meta import MetaTrainConfig

Params = dict[str, torch.Tensor]


class HeldOutEvaluator:
    """``L_out`` and PL accuracy of ``θ^K(φ)`` on held-out preferences, on fixed support batches."""

    def __init__(
        self,
        objective: BilevelObjective,
        domains: Mapping[str, Any],
        held_out: Mapping[str, Sequence[Preference]],
        theta_init: Params,
        config: MetaTrainConfig,
    ) -> None:
        self.objective, self.theta_init, self.config = objective, theta_init, config
        generator = torch.Generator().manual_seed(config.seed + 7919)
        self.tasks = []
        for name, pairs in held_out.items():
            if name not in domains:
                raise ValueError(f"held_out[{name!r}] names no training domain")
            pairs = check_records(pairs, Preference, f"held_out[{name!r}]")
            support: list[dict[str, Any]] = []
            while len(support) < config.inner_steps:
                for records in minibatches(
                    domains[name].fine_tuning, config.support_batch_size, generator
                ):
                    support.append(objective.support_batch(records))
            size = config.query_batch_size
            queries = [
                objective.query_batch(pairs[i : i + size]) for i in range(0, len(pairs), size)
            ]
            self.tasks.append((support[: config.inner_steps], queries))

    def __call__(self, phi: Params, step: int) -> dict[str, float]:
        losses, accuracies = [], []
        for support, queries in self.tasks:
            theta = adapt_policy_parameters(
                self.objective, self.theta_init, phi, support, self.config.inner_lr
            )
            with torch.no_grad():
                outs = [self.objective.policy.functional_sequence_logps(theta, q) for q in queries]
            parts = [torch.cat([o[i] for o in outs]) for i in range(4)]
            losses.append(float(policy_preference_loss(*parts)))
            accuracies.append(pl_accuracy(*parts).accuracy)
        return {
            "step": step,
            "outer_loss": math.fsum(losses) / len(losses),
            "pl_accuracy": math.fsum(accuracies) / len(accuracies),
        }


__all__ = ["HeldOutEvaluator"]

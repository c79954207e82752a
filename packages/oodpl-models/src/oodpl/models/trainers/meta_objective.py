"""The pure callables of the OODPL bilevel problem on a (policy, reward model) pair
([OODPL] Eq. 6–10, METHODS §3): the separable inner loss with its per-sample reward Jacobians,
the outer loss, the support / query collation and minibatch order, and the plain inner
adaptation ``θ^K``.
:mod:`oodpl.models.trainers.meta` runs the meta-training loop on them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from oodpl.core.hypergrad import SeparableInnerLoss
from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss
from oodpl.core.records import Completion, Preference
from oodpl.models.backbone import to_device
from oodpl.models.per_sample_grads import PerSampleGradientError, PerSampleGradients
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.trainers.pair_batching import packed_collator, packing_unavailable

if TYPE_CHECKING:
    from oodpl.models.trainers.meta import MetaTrainConfig

Params = dict[str, torch.Tensor]


def minibatches(
    records: Sequence[Any], batch_size: int, generator: torch.Generator
) -> Iterator[list[Any]]:
    """One epoch of shuffled minibatches of ``batch_size`` (the remainder is dropped unless the
    data is smaller than one batch, which is then used whole)."""
    order = torch.randperm(len(records), generator=generator).tolist()
    size = min(batch_size, len(records))
    for start in range(0, len(order) - size + 1, size):
        yield [records[i] for i in order[start : start + size]]


class BilevelObjective:
    """The pure callables of the bilevel problem on a (policy, reward model) pair.

    ``inner_loss(θ, φ, batch)`` with ``batch = {"policy": seq_batch, "reward": seq_batch}`` (the
    same records collated for each model) is ``L_in`` ([OODPL] Eq. 10);
    ``outer_loss(θ, pair_batch)`` is ``L_out`` ([OODPL] Eq. 6–7). ``θ``/``φ`` are dicts keyed
    like ``policy.trainable_parameters()`` / ``reward_model.trainable_parameters()`` (any
    subset); the models' other parameters are used as they are.

    ``inner_loss`` is a :class:`~oodpl.core.hypergrad.SeparableInnerLoss`: ``φ`` enters ``L_in``
    only through the support rewards ``r_φ(x, y)`` (:meth:`support_rewards`), so the
    hypergradient scores each support batch once and pulls the weights' derivative back through
    the reward model with one first-order pass per inner step (METHODS §3). With
    ``config.reward_jacobian`` (and ``φ`` made of ``nn.Linear`` weights/biases: LoRA factors,
    value head) it also gets :meth:`support_reward_jacobian`: each kept inner step scores its
    batch with per-sample gradients ``∂r_φ(x_i, y_i)/∂φ`` and every ``J_kᵀ v = Σ_i c_i ∂r_i/∂φ``
    of the reverse pass is a contraction, with no reward-model pass at all.

    ``query_batch`` packs the query pairs (prefix-shared layout) when ``config.pack_queries``
    and the policy can run packed batches; ``outer_loss`` accepts both layouts (the
    hypergradient needs only first-order derivatives of ``L_out``).
    """

    def __init__(self, policy: Policy, reward_model: RewardModel, config: MetaTrainConfig):
        self.policy = policy
        self.reward_model = reward_model
        self.config = config
        self._jacobians: dict[tuple[str, ...], PerSampleGradients | None] = {}
        jacobian = None
        names = tuple(reward_model.trainable_parameters())
        if config.reward_parameters == "value_head":
            names = tuple(k for k in names if k.startswith("value_head."))
        if config.reward_jacobian and names and self._per_sample(names):
            jacobian = self.support_reward_jacobian
        self.inner_loss = SeparableInnerLoss(
            self.support_rewards, self.weighted_regression_loss, feature_jacobian=jacobian
        )
        self.pack_queries = config.pack_queries and packing_unavailable(policy) is None

    def _per_sample(self, names: tuple[str, ...]) -> PerSampleGradients | None:
        """The per-sample gradient rule for these ``φ`` names (None: not all nn.Linear)."""
        if names not in self._jacobians:
            try:
                self._jacobians[names] = PerSampleGradients(self.reward_model, names)
            except PerSampleGradientError:
                self._jacobians[names] = None
        return self._jacobians[names]

    def support_reward_jacobian(
        self, phi: Params, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, Params] | None:
        """``(r_φ(x, y) [B], {name: ∂r_φ(x_i, y_i)/∂φ[name] [B, *shape]})`` of a support batch
        from one forward and one backward (:class:`~oodpl.models.per_sample_grads.
        PerSampleGradients`), or ``None`` when ``φ`` or the batch does not fit the per-sample
        rule (the hypergradient then uses vector-Jacobian products)."""
        rule = self._per_sample(tuple(phi))
        if rule is None:
            return None
        try:
            return rule(phi, lambda p: self.reward_model.functional_rewards(p, batch["reward"]))
        except PerSampleGradientError:
            self._jacobians[tuple(phi)] = None
            return None

    def support_rewards(self, phi: Params, batch: Mapping[str, Any]) -> torch.Tensor:
        """``r_φ(x, y)`` of a support batch (the features of ``L_in`` that depend on ``φ``)."""
        return self.reward_model.functional_rewards(phi, batch["reward"])

    def weighted_regression_loss(
        self, theta: Params, rewards: torch.Tensor, batch: Mapping[str, Any]
    ) -> torch.Tensor:
        """``L_in(θ)`` given the support rewards ([OODPL] Eq. 10)."""
        logps, n_tokens = self.policy.functional_sequence_logps(theta, batch["policy"])
        return reward_weighted_regression_loss(
            logps,
            n_tokens,
            rewards,
            beta=self.config.beta,
            weighting=self.config.weighting,
            max_weight=self.config.max_weight,
        )

    def outer_loss(self, theta: Params, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return policy_preference_loss(*self.policy.functional_sequence_logps(theta, batch))

    def support_batch(self, records: Sequence[Completion]) -> dict[str, Any]:
        """Collate fine-tuning records for both models, on the policy's device."""
        overrides = self.config.collator_overrides()
        device = self.policy.device
        return {
            "policy": to_device(self.policy.completion_collator(**overrides)(records), device),
            "reward": to_device(
                self.reward_model.completion_collator(**overrides)(records), device
            ),
        }

    def query_batch(self, records: Sequence[Preference]) -> dict[str, Any]:
        """Collate query pairs for the policy, packed when :attr:`pack_queries` and packing
        saves enough (else padded), on the policy's device."""
        collator: Any = self.policy.preference_collator(**self.config.collator_overrides())
        if self.pack_queries:
            collator = packed_collator(self.policy, collator, mode="auto")
        return to_device(collator(records), self.policy.device)


def adapt_policy_parameters(
    objective: BilevelObjective,
    theta_init: Params,
    phi: Params,
    support_batches: Sequence[Mapping[str, Any]],
    lr: float,
) -> Params:
    """``θ^K``: plain SGD on ``L_in(·; φ)`` from ``θ_init``, one step per support batch."""
    theta = {k: v.detach() for k, v in theta_init.items()}
    frozen = {k: v.detach() for k, v in phi.items()}
    for batch in support_batches:
        with torch.enable_grad():
            leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
            loss = objective.inner_loss(leaves, frozen, batch)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        theta = {
            k: v if g is None else v - lr * g.detach()
            for (k, v), g in zip(theta.items(), grads, strict=True)
        }
    return theta


__all__ = ["BilevelObjective", "adapt_policy_parameters", "minibatches"]

"""Trainers, one small module each, all on :mod:`oodpl.models.engine`.

| module | trainer | objective |
| --- | --- | --- |
| ``reward`` | :func:`train_reward_model` | BT, MultiTask mixing, MORE reweighting (§1, §5) |
| ``dpo`` | :func:`train_dpo` | the DPO family with a frozen or precomputed reference (METHODS §2) |
| ``sft`` | :func:`train_sft` | supervised fine-tuning on response tokens |
| ``hpl`` | :func:`train_hpl` | length-normalised BT on the policy ([OODPL] Eq. 6–7) |
| ``meta`` | :func:`train_meta` | the OODPL bilevel meta-trainer ([OODPL] Alg. 1) |
| ``meta_test`` | :func:`train_meta_test` | RWR fine-tuning, frozen RM ([OODPL] Alg. 2) |
| ``rjs`` | :func:`train_rjs` | rejection-sampling fine-tuning (METHODS §5) |
| ``ppo`` | :func:`train_ppo` | PPO(tr)/PPO(te) baselines: KL-penalised reward, GAE, clipping |
"""

from oodpl.models.trainers._policy_common import (
    GenerationOptions,
    PolicyTrainResult,
    completion_nll,
    policy_preference_metrics,
)
from oodpl.models.trainers.dpo import DPOConfig, precompute_reference_logps, train_dpo
from oodpl.models.trainers.hpl import HPLConfig, train_hpl
from oodpl.models.trainers.meta import (
    BilevelObjective,
    MetaDomain,
    MetaTrainConfig,
    MetaTrainerResult,
    train_meta,
)
from oodpl.models.trainers.meta_test import MetaTestConfig, MetaTestResult, train_meta_test
from oodpl.models.trainers.ppo import PolicyWithValueHead, PPOConfig, PPOResult, train_ppo
from oodpl.models.trainers.reward import (
    REWARD_OBJECTIVES,
    RewardTrainConfig,
    RewardTrainResult,
    train_reward_model,
)
from oodpl.models.trainers.rjs import RJSConfig, RJSResult, train_rjs
from oodpl.models.trainers.sft import SFTConfig, train_sft

__all__ = [
    "REWARD_OBJECTIVES",
    "BilevelObjective",
    "DPOConfig",
    "GenerationOptions",
    "HPLConfig",
    "MetaDomain",
    "MetaTestConfig",
    "MetaTestResult",
    "MetaTrainConfig",
    "MetaTrainerResult",
    "PPOConfig",
    "PPOResult",
    "PolicyTrainResult",
    "PolicyWithValueHead",
    "RJSConfig",
    "RJSResult",
    "RewardTrainConfig",
    "RewardTrainResult",
    "SFTConfig",
    "completion_nll",
    "policy_preference_metrics",
    "precompute_reference_logps",
    "train_dpo",
    "train_hpl",
    "train_meta",
    "train_meta_test",
    "train_ppo",
    "train_reward_model",
    "train_rjs",
    "train_sft",
]

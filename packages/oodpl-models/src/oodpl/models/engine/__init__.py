"""Training engines: one interface, two backends (plain PyTorch, DeepSpeed ZeRO 0-3).

>>> engine = build_engine(model, EngineConfig(backend="torch", lr=1e-3, grad_accum=2))
>>> loss, metrics = loss_fn(engine.model, batch)
>>> engine.backward(loss); outcome = engine.step()

``oodpl.models.engine.loop.train`` runs the whole loop (deterministic data order, metrics JSONL,
checkpoints, resume). DeepSpeed is imported only when ``backend="deepspeed"`` is built.
"""

from __future__ import annotations

from torch import nn

from oodpl.models.engine.base import LossFn, ModelHandle, StepOutcome, TrainingEngine
from oodpl.models.engine.config import EngineConfig, lr_multiplier
from oodpl.models.engine.distributed import (
    DistributedEnv,
    global_batches,
    rank_micro_batches,
    read_distributed_env,
)
from oodpl.models.engine.state import EngineStateError

__all__ = [
    "DistributedEnv",
    "EngineConfig",
    "EngineStateError",
    "LossFn",
    "ModelHandle",
    "StepOutcome",
    "TrainingEngine",
    "build_engine",
    "global_batches",
    "lr_multiplier",
    "rank_micro_batches",
    "read_distributed_env",
]


def build_engine(module: nn.Module, config: EngineConfig, **kwargs: object) -> TrainingEngine:
    """A :class:`TrainingEngine` of ``config.backend`` training ``module``.

    Keyword arguments go to the backend (``device=`` for torch, ``process_group_backend=``
    for both). ``backend="deepspeed"`` without DeepSpeed installed raises
    ``DeepSpeedUnavailableError`` (an ``ImportError``) with the install command.
    """
    if not isinstance(config, EngineConfig):
        raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
    if config.backend == "torch":
        from oodpl.models.engine.torch_engine import TorchEngine

        return TorchEngine(module, config, **kwargs)  # type: ignore[arg-type]
    from oodpl.models.engine.deepspeed_engine import DeepSpeedTrainingEngine

    return DeepSpeedTrainingEngine(module, config, **kwargs)  # type: ignore[arg-type]

"""Run configuration: typed schemas (:mod:`.schema`) and the YAML loader (:mod:`.loader`)."""

from oodpl.cli.config.loader import (
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
    parse_override,
    schema_keys,
)
from oodpl.cli.config.schema import (
    RUN_KINDS,
    DataConfig,
    DataSizes,
    EngineConfig,
    EvalConfig,
    JudgeConfig,
    LoraConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    engine_kwargs,
    to_dict,
)
from oodpl.cli.config.trainers import (
    DPOTraining,
    GenerationConfig,
    MetaTraining,
    PPOTraining,
    RewardModelTraining,
    RJSTraining,
)

__all__ = [
    "RUN_KINDS",
    "DPOTraining",
    "DataConfig",
    "DataSizes",
    "EngineConfig",
    "EvalConfig",
    "GenerationConfig",
    "JudgeConfig",
    "LoraConfig",
    "MetaTraining",
    "ModelConfig",
    "PPOTraining",
    "RJSTraining",
    "RewardModelTraining",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "dump_config",
    "engine_kwargs",
    "load_config",
    "parse_override",
    "schema_keys",
    "to_dict",
]

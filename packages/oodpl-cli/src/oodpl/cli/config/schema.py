"""Typed schemas of a run configuration (the YAML files under ``configs/`` and ``--set`` overrides).

A run config is one YAML mapping with a required ``kind`` and optional sections::

    kind: dpo                 # sft | rm | dpo | hpl | ppo | meta | meta-test | rjs
    name: dpo-book            # run directory name (default: <kind>-<timestamp>)
    output_dir: runs
    seed: 0
    model:  {preset: pythia-tiny, lora: {rank: 8, alpha: 16}, dtype: float32}
    data:   {source: synthetic, domains: [book, dvd, electronics, kitchen], held_out: [kitchen]}
    train:  {lr: 1.0e-4, epochs: 1, batch_size: 8, dpo: {beta: 0.1, loss_type: sigmoid}}
    engine: {backend: torch, precision: fp32}
    eval:   {n_bins: 10, temperatures: [0.5, 1.0]}

Trainer-specific settings live in sub-sections of ``train`` named after the trainer (``train.rm``,
``train.dpo``, ``train.meta``, ``train.ppo``, ``train.rjs``); kinds ignore the sub-sections of other
kinds. The experiment kinds (``quickstart``, ``study``, ``iterate``: several trainers in one
run) have their own sections of the same names (:mod:`oodpl.cli.config.experiments`).
Every field carries a one-line help text (``oodpl config schema`` lists them all) and the
loader (:mod:`oodpl.cli.config.loader`) validates types, bounds and choices, naming the full
dotted key and file on error. Cross-field rules live in each section's ``problems()`` method.
Formulas the settings feed are in METHODS.md (§2 DPO family, §3 OODPL bilevel, §5 MORE).
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Literal, get_args

from oodpl.cli.config.experiments import IterateConfig, QuickstartConfig, StudyConfig
from oodpl.cli.config.fields import doc
from oodpl.cli.config.trainers import (
    DPOTraining,
    MetaTraining,
    PPOTraining,
    RewardModelTraining,
    RJSTraining,
)

TrainKind = Literal["sft", "rm", "dpo", "hpl", "ppo", "meta", "meta-test", "rjs"]
ExperimentKind = Literal["quickstart", "study", "iterate"]
RunKind = Literal[TrainKind, ExperimentKind]
RUN_KINDS: tuple[str, ...] = get_args(TrainKind)
"""The trainable kinds (``oodpl train KIND``)."""
EXPERIMENT_KINDS: tuple[str, ...] = get_args(ExperimentKind)
"""Kinds that run several trainers in one run directory (``oodpl quickstart|study|iterate``)."""

Problems = list[tuple[str, str]]
"""(field name, message) pairs returned by ``problems()``; the loader prefixes the dotted path."""


@dataclasses.dataclass
class LoraConfig:
    """LoRA adapter settings (the trainable parameters θ of the policy, METHODS §3)."""

    enabled: bool = field(default=True, metadata=doc("train LoRA adapters instead of all weights"))
    rank: int = field(default=8, metadata=doc("LoRA rank r", ge=1))
    alpha: float = field(
        default=16.0, metadata=doc("LoRA scaling alpha (update scaled by alpha / rank)", gt=0)
    )
    dropout: float = field(default=0.0, metadata=doc("dropout on the LoRA input", ge=0, le=1))
    targets: list[str] = field(
        default_factory=list,
        metadata=doc("module names to adapt; empty = the preset's default targets"),
    )


@dataclasses.dataclass
class ModelConfig:
    """Which model to build: a random-weight preset or a local checkpoint directory."""

    preset: str | None = field(
        default=None,
        metadata=doc("tiny random-weight preset (pythia-tiny, gemma-tiny, t5-tiny, pythia-160m)"),
    )
    path: str | None = field(
        default=None, metadata=doc("local checkpoint directory (instead of a preset)")
    )
    lora: LoraConfig = field(default_factory=LoraConfig, metadata=doc("LoRA adapter settings"))
    attn_implementation: Literal["eager", "sdpa"] = field(
        default="eager",
        metadata=doc("attention kernel; exact hypergradients need eager (METHODS §3)"),
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata=doc("dtype of the model weights")
    )
    max_length: int = field(default=256, metadata=doc("maximum tokens of prompt + response", ge=8))
    vocab_size: int = field(
        default=1024,
        metadata=doc("vocabulary of the byte-level BPE tokenizer trained for presets", ge=259),
    )
    trust_remote_code: bool = field(
        default=False, metadata=doc("allow custom modelling code from `path`")
    )

    def problems(self) -> Problems:
        if self.preset is not None and self.path is not None:
            return [("path", "set either model.preset or model.path, not both")]
        return []

    def __post_init__(self) -> None:
        if self.preset is None and self.path is None:
            self.preset = "pythia-tiny"


@dataclasses.dataclass
class DataSizes:
    """Items per domain for each split ([OODPL] Tab. 4 defaults)."""

    fine_tuning: int = field(
        default=1000, metadata=doc("fine-tuning (support) completions per domain", ge=0)
    )
    preference_train: int = field(
        default=500, metadata=doc("training preference pairs per domain", ge=0)
    )
    eval_reference: int = field(
        default=500, metadata=doc("evaluation prompts with reference answers", ge=0)
    )
    eval_preference: int = field(
        default=500, metadata=doc("evaluation preference pairs per domain", ge=0)
    )


DpormSetting = Literal["I(a)", "I(b)", "I(c)", "II(a)", "II(b)"]


@dataclasses.dataclass
class ExtraSource:
    """One more source pooled with ``data.source`` (MORE's five sources, METHODS §5; the other
    datasets of a DPORM setting, §4; Amazon reviews next to CSG pairs, §3)."""

    source: str = field(metadata=doc("data source name in oodpl.data.registry"))
    path: str | None = field(default=None, metadata=doc("local file or directory of the source"))
    domains: list[str] = field(default_factory=list, metadata=doc("domains to use; empty = all"))
    split: str | None = field(default=None, metadata=doc("split to read; null = its default"))
    options: list[str] = field(
        default_factory=list, metadata=doc("source options as KEY=VALUE (oodpl data list --json)")
    )

    def problems(self) -> Problems:
        bad = [o for o in self.options if "=" not in o or not o.partition("=")[0].strip()]
        return [("options", f"expected KEY=VALUE, got {bad}")] if bad else []


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how it is split into domains."""

    source: str = field(
        default="synthetic", metadata=doc("data source name in oodpl.data.registry")
    )
    path: str | None = field(
        default=None, metadata=doc("local file or directory of the source, if it needs one")
    )
    domains: list[str] = field(default_factory=list, metadata=doc("domains to use; empty = all"))
    split: str | None = field(
        default=None, metadata=doc("split of data.source to read; null = the source's default")
    )
    held_out: list[str] = field(
        default_factory=list,
        metadata=doc("test (out-of-distribution) domains kept out of training"),
    )
    protocol: Literal[
        "leave-one-domain-out", "shp-group-folds", "dporm-settings", "per-domain", "none"
    ] = field(
        default="leave-one-domain-out",
        metadata=doc("split protocol (METHODS §3 data protocol, §4)"),
    )
    setting: DpormSetting | None = field(
        default=None, metadata=doc("dporm-settings: the setting to run; null = all five (§4)")
    )
    extra_sources: list[ExtraSource] = field(
        default_factory=list, metadata=doc("more sources pooled with data.source")
    )
    sizes: DataSizes = field(default_factory=DataSizes, metadata=doc("items per domain and split"))
    seed: int = field(default=0, metadata=doc("seed of sampling and splitting"))
    lenient: bool = field(
        default=False, metadata=doc("skip malformed rows (reported) instead of failing")
    )

    def problems(self) -> Problems:
        out: Problems = []
        unknown = [d for d in self.held_out if self.domains and d not in self.domains]
        if unknown:
            out.append(("held_out", f"held-out domains {unknown} are not in data.domains"))
        if self.domains and len(set(self.domains)) != len(self.domains):
            out.append(("domains", "domains are listed more than once"))
        if self.setting is not None and self.protocol != "dporm-settings":
            out.append(("setting", "data.setting needs data.protocol: dporm-settings"))
        return out


@dataclasses.dataclass
class TrainConfig:
    """Optimisation settings shared by all trainers plus one sub-section per trainer kind."""

    lr: float = field(
        default=0.0001, metadata=doc("learning rate (outer learning rate for meta)", gt=0)
    )
    epochs: float = field(default=1.0, metadata=doc("passes over the training data", gt=0))
    max_steps: int = field(
        default=0, metadata=doc("stop after this many optimizer steps; 0 = no limit", ge=0)
    )
    batch_size: int = field(default=8, metadata=doc("examples per micro-batch", ge=1))
    eval_batch_size: int = field(default=16, metadata=doc("examples per evaluation batch", ge=1))
    grad_accum: int = field(
        default=1, metadata=doc("micro-batches accumulated per optimizer step", ge=1)
    )
    weight_decay: float = field(default=0.0, metadata=doc("AdamW weight decay", ge=0))
    warmup_steps: int = field(default=0, metadata=doc("linear learning-rate warm-up steps", ge=0))
    scheduler: Literal["constant", "linear", "cosine"] = field(
        default="constant", metadata=doc("learning-rate schedule after warm-up")
    )
    max_grad_norm: float = field(default=1.0, metadata=doc("gradient clipping norm; 0 = off", ge=0))
    log_every: int = field(default=10, metadata=doc("write metrics every N steps", ge=1))
    eval_every: int = field(
        default=0, metadata=doc("evaluate every N steps; 0 = at the end only", ge=0)
    )
    save_every: int = field(
        default=0,
        metadata=doc(
            "checkpoint every N steps (meta: outer steps; ppo: rollout iterations); "
            "0 = at the end only",
            ge=0,
        ),
    )
    init_from: str | None = field(
        default=None, metadata=doc("policy checkpoint to start from (e.g. the SFT run)")
    )
    packing: Literal["auto", "always", "never"] = field(
        default="auto",
        metadata=doc(
            "kinds rm, dpo: padding-free batches, prompt run once per pair (auto: when it saves "
            ">= 10% of the token positions; never: padded, length-bucketed)"
        ),
    )
    rm: RewardModelTraining = field(default_factory=RewardModelTraining, metadata=doc("kind rm"))
    dpo: DPOTraining = field(default_factory=DPOTraining, metadata=doc("kind dpo"))
    meta: MetaTraining = field(default_factory=MetaTraining, metadata=doc("kinds meta, meta-test"))
    ppo: PPOTraining = field(default_factory=PPOTraining, metadata=doc("kind ppo"))
    rjs: RJSTraining = field(default_factory=RJSTraining, metadata=doc("kind rjs"))


@dataclasses.dataclass
class EngineConfig:
    """Training engine; mirrors oodpl.models.engine.EngineConfig (see :func:`engine_kwargs`)."""

    backend: Literal["torch", "deepspeed"] = field(
        default="torch", metadata=doc("plain PyTorch or DeepSpeed")
    )
    zero_stage: int = field(default=0, metadata=doc("DeepSpeed ZeRO stage", ge=0, le=3))
    offload_optimizer: bool = field(
        default=False, metadata=doc("ZeRO-Offload: optimizer state in CPU memory (stage >= 1)")
    )
    offload_params: bool = field(
        default=False, metadata=doc("ZeRO-3: parameters in CPU memory between uses")
    )
    precision: Literal["fp32", "bf16", "fp16"] = field(
        default="fp32", metadata=doc("mixed precision of training (fp32 master weights)")
    )
    grad_checkpointing: bool = field(
        default=False, metadata=doc("recompute activations in backward to save memory")
    )
    optimizer: Literal["auto", "fused", "foreach"] = field(
        default="auto",
        metadata=doc("AdamW kernel: fused (one kernel per step), foreach, or auto (fused if able)"),
    )

    def problems(self) -> Problems:
        out: Problems = []
        deepspeed_only = {
            "zero_stage": self.zero_stage != 0,
            "offload_optimizer": self.offload_optimizer,
            "offload_params": self.offload_params,
        }
        if self.backend == "torch":
            out += [(k, "needs engine.backend: deepspeed") for k, v in deepspeed_only.items() if v]
        if self.offload_optimizer and self.zero_stage == 0:
            out.append(("offload_optimizer", "needs engine.zero_stage 1, 2 or 3"))
        if self.offload_params and self.zero_stage != 3:
            out.append(("offload_params", "needs engine.zero_stage: 3"))
        return out


@dataclasses.dataclass
class JudgeConfig:
    """LLM judge over the OpenAI API protocol (win rates, METHODS §3 metrics)."""

    enabled: bool = field(default=False, metadata=doc("compute LLM-judge win rates"))
    base_url: str | None = field(
        default=None, metadata=doc("OpenAI-compatible endpoint (e.g. loopback server)")
    )
    model: str | None = field(default=None, metadata=doc("judge model name"))
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata=doc("NAME of the env variable holding the key")
    )
    swap_positions: bool = field(
        default=True, metadata=doc("ask twice with answers swapped ([MORE] App. D)")
    )
    concurrency: int = field(default=4, metadata=doc("parallel judge requests", ge=1))

    def problems(self) -> Problems:
        if self.enabled and not self.model:
            return [("model", "eval.judge.enabled needs eval.judge.model")]
        return []


@dataclasses.dataclass
class EvalConfig:
    """Evaluation: accuracies, calibration and generation quality."""

    n_bins: int = field(default=10, metadata=doc("calibration bins M (METHODS §5)", ge=1))
    binning: Literal["uniform", "quantile"] = field(
        default="uniform", metadata=doc("calibration bins: equal width or equal mass")
    )
    temperatures: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75, 1.0], metadata=doc("sampling temperatures", gt=0)
    )
    repetitions: int = field(
        default=3, metadata=doc("generation repetitions per temperature", ge=1)
    )
    top_p: float = field(
        default=1.0, metadata=doc("nucleus sampling mass for evaluation", gt=0, le=1)
    )
    max_new_tokens: int = field(
        default=64, metadata=doc("maximum generated tokens for evaluation", ge=1)
    )
    max_examples: int = field(
        default=0, metadata=doc("cap of evaluation examples per domain; 0 = all", ge=0)
    )
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata=doc("LLM judge settings"))


@dataclasses.dataclass
class RunConfig:
    """One run: what to train (``kind``), on which model and data, and how to evaluate it."""

    kind: RunKind = field(
        metadata=doc(
            "sft | rm | dpo | hpl | ppo | meta | meta-test | rjs, or an experiment: "
            "quickstart | study | iterate"
        )
    )
    name: str | None = field(
        default=None, metadata=doc("run directory name; default <kind>-<timestamp>")
    )
    output_dir: str = field(default="runs", metadata=doc("parent directory of run directories"))
    seed: int = field(default=0, metadata=doc("global seed (torch, sampling)"))
    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("model settings"))
    data: DataConfig = field(default_factory=DataConfig, metadata=doc("data settings"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=doc("training settings"))
    engine: EngineConfig = field(default_factory=EngineConfig, metadata=doc("engine settings"))
    eval: EvalConfig = field(default_factory=EvalConfig, metadata=doc("evaluation settings"))
    study: StudyConfig = field(default_factory=StudyConfig, metadata=doc("kind study"))
    iterate: IterateConfig = field(default_factory=IterateConfig, metadata=doc("kind iterate"))
    quickstart: QuickstartConfig = field(
        default_factory=QuickstartConfig, metadata=doc("kind quickstart")
    )
    notes: str = field(default="", metadata=doc("free text copied into the report"))

    def problems(self) -> Problems:
        out: Problems = []
        if self.name is not None and (not self.name.strip() or "/" in self.name):
            out.append(("name", "run name must be non-empty and contain no '/'"))
        needs_rm = {"ppo": self.train.ppo.reward_model, "rjs": self.train.rjs.reward_model}
        if self.kind in needs_rm and not needs_rm[self.kind]:
            out.append((f"train.{self.kind}.reward_model", f"required for kind {self.kind}"))
        if self.kind == "meta-test" and not self.train.meta.reward_model:
            out.append(("train.meta.reward_model", "required for kind meta-test"))
        return out


def to_dict(config: object) -> dict:
    """A plain, YAML-serialisable dict of a schema dataclass (lists copied, sections nested)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"to_dict expects a schema dataclass instance, got {type(config).__name__}")
    return dataclasses.asdict(config)


def engine_kwargs(config: RunConfig, *, max_steps: int) -> dict[str, Any]:
    """Keyword arguments of ``oodpl.models.engine.EngineConfig`` for a run.

    Engine settings come from ``config.engine``, optimisation settings from ``config.train``;
    ``max_steps`` is the resolved number of optimizer steps (``train.max_steps`` or the count
    implied by ``train.epochs``), which the schedule needs.
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {max_steps!r}")
    engine, train = config.engine, config.train
    return {
        "backend": engine.backend,
        "zero_stage": engine.zero_stage,
        "offload_optimizer": engine.offload_optimizer,
        "offload_params": engine.offload_params,
        "precision": engine.precision,
        "grad_checkpointing": engine.grad_checkpointing,
        "optimizer_impl": engine.optimizer,
        "grad_accum": train.grad_accum,
        "micro_batch_size": train.batch_size,
        "lr": train.lr,
        "weight_decay": train.weight_decay,
        "warmup_steps": min(train.warmup_steps, max_steps),
        "max_steps": max_steps,
        "scheduler": train.scheduler,
        "max_grad_norm": train.max_grad_norm or None,
        "seed": config.seed,
    }

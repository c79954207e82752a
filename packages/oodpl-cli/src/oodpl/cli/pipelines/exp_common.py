"""What the quickstart, study and iterate experiments share: the workbench and its stages.

A :class:`Workbench` holds one run's synthetic benchmark (:class:`~.build.RunData` with every
domain), its tokenizer, the shared SFT starting policy ``π`` (trained once, full weights, on the
fine-tuning completions of every domain: the SFT baseline of METHODS §3), and hands out fresh
models built from it:

- :meth:`Workbench.lora_policy`: a copy of ``π`` with a LoRA adapter and a trainable copy of the
  LM head (``θ`` in [OODPL]; DPO, HPL, PPO and meta-test train these);
- :meth:`Workbench.reward_model`: a value head ``r_φ(x, y) = w·h_last + b`` on a copy of ``π``'s
  transformer (METHODS §1; every weight but the LM head trains).

Every training stage runs inside :meth:`Workbench.stage`, which advances the terminal progress
bar, times the stage and copies the trainer's per-step losses into the run's ``metrics.jsonl``
(metric ``loss/<experiment>``, phase = the stage), so the report shows the training curves.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from oodpl.cli.config.schema import DataConfig, DataSizes, EvalConfig, RunConfig
from oodpl.cli.pipelines.build import RunData, build_data
from oodpl.cli.progress import progress_bar
from oodpl.cli.run_dir import RunDir

ORDER = {"summary": 0, "oodpl": 10, "dporm": 20, "more": 30, "iterate": 40, "study": 20}
"""Report order of each experiment's result sections (``Section.order``)."""

EXPERIMENT_MEANINGS = {
    "wall_time_s": "wall-clock seconds the experiment took on this machine",
    "gold_reward": "mean gold reward r*(x, y) of one sampled response per evaluation prompt "
    "(synthetic benchmark); higher is better",
    "exrm_accuracy": "preference accuracy mean 1[r_φ(y_w) > r_φ(y_l)] of an explicit reward model",
    "accuracy": "preference accuracy mean 1[r(y_w) > r(y_l)] of a reward model",
    "ece": "expected calibration error of p = σ(r_w − r_l), both orientations, 10 bins "
    "(METHODS §5); lower is better",
}


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """Model and shared-policy settings of an experiment."""

    preset: str = "pythia-tiny"
    vocab_size: int = 1024
    max_length: int = 96
    batch_size: int = 16
    sft_steps: int = 300
    sft_lr: float = 3e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    attn_implementation: str = "sdpa"


def synthetic_data(sizes: DataSizes, *, domains: Sequence[str] = (), seed: int = 0) -> RunData:
    """Every domain of the synthetic benchmark as training domains (no held-out split yet)."""
    return build_data(DataConfig(source="synthetic", domains=list(domains), sizes=sizes, seed=seed))


def view(data: RunData, train: Sequence[str], test: Sequence[str]) -> RunData:
    """``data`` seen as trained on ``train`` and evaluated out of distribution on ``test``."""
    return dataclasses.replace(data, train_domains=tuple(train), test_domains=tuple(test))


class StageTracker:
    """A progress bar over planned stages; times each stage (``times``) on the way.

    ``with tracker: ... with tracker.stage("(a) DPO"): train()``. ``total`` may grow with
    :meth:`plan` before or during the run.
    """

    def __init__(self, total: int = 0, *, disable: bool = False, title: str = "oodpl") -> None:
        self.total = total
        self.disable = disable
        self.title = title
        self.times: dict[str, float] = {}
        self._advance: Callable[..., None] | None = None
        self._stack: contextlib.ExitStack | None = None

    def plan(self, stages: int) -> None:
        """Add ``stages`` to the bar's total."""
        self.total += stages
        if self._advance is not None:
            self._advance(0, total=self.total)

    def __enter__(self) -> StageTracker:
        self._stack = contextlib.ExitStack()
        self._advance = self._stack.enter_context(
            progress_bar(self.total, self.title, disable=self.disable)
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack, self._advance = None, None

    @contextlib.contextmanager
    def stage(self, label: str) -> Iterator[None]:
        """Show ``label`` on the bar while the block runs; advance and time it afterwards."""
        if self._advance is not None:
            self._advance(0, description=label)
        start = time.perf_counter()
        yield
        self.times[label] = time.perf_counter() - start
        if self._advance is not None:
            self._advance(1)


@dataclasses.dataclass
class Workbench:
    """The shared state of an experiment run (see the module docstring)."""

    data: RunData
    plan: ModelPlan
    seed: int
    run: RunDir | None
    tracker: StageTracker
    eval_config: EvalConfig
    tokenizer: Any = None
    sft: Any = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        data: RunData,
        plan: ModelPlan,
        *,
        seed: int,
        run: RunDir | None,
        tracker: StageTracker,
        eval_config: EvalConfig,
    ) -> Workbench:
        """A workbench with a BPE tokenizer trained on every text of ``data`` (METHODS §1)."""
        from oodpl.models.tokenizer import train_bpe_tokenizer

        texts = data.texts()
        if not texts:
            raise ValueError("data holds no text to train a tokenizer on")
        tokenizer = train_bpe_tokenizer(
            texts, vocab_size=plan.vocab_size, model_max_length=plan.max_length
        )
        return cls(data, plan, seed, run, tracker, eval_config, tokenizer=tokenizer)

    @property
    def gold(self) -> Any:
        if self.data.gold is None:
            raise ValueError("experiments need the synthetic benchmark's gold reward")
        return self.data.gold

    def engine(self, steps: int, lr: float, *, batch_size: int | None = None, **changes: Any):
        """An :class:`oodpl.models.engine.EngineConfig`: AdamW, constant lr after 5% warm-up."""
        from oodpl.models.engine import EngineConfig

        options = {
            "lr": lr,
            "max_steps": steps,
            "micro_batch_size": batch_size or self.plan.batch_size,
            "warmup_steps": max(0, steps // 20),
            "seed": self.seed,
            **changes,
        }
        return EngineConfig(**options)

    # ------------------------------------------------------------------ models
    def sft_policy(self, experiment: str = "shared") -> Any:
        """The shared SFT policy ``π`` (trained on first use; never modified afterwards)."""
        if self.sft is None:
            from oodpl.models.policy import Policy
            from oodpl.models.trainers.sft import SFTConfig, train_sft

            policy = Policy.from_preset(
                self.plan.preset,
                self.tokenizer,
                seed=self.seed,
                attn_implementation=self.plan.attn_implementation,
                max_length=self.plan.max_length,
            )
            records = self.data.records("fine_tuning", self.data.domains)
            steps = self.plan.sft_steps
            with self.stage(experiment, "SFT π (all domains' fine-tuning data)"):
                result = train_sft(
                    policy,
                    records,
                    SFTConfig(),
                    engine=self.engine(steps, self.plan.sft_lr, scheduler="cosine"),
                    max_steps=steps,
                )
                self.log(experiment, "sft", result.history)
            policy.eval()
            policy.requires_grad_(False)
            self.sft = policy
        return self.sft

    def lora_policy(self, seed_offset: int = 0) -> Any:
        """A trainable copy of ``π``: LoRA adapter + LM-head copy ([OODPL] θ)."""
        from oodpl.models.lora import LoraSpec
        from oodpl.models.policy import Policy

        base = copy.deepcopy(self.sft_policy().lm)
        base.requires_grad_(True)
        spec = LoraSpec(r=self.plan.lora_rank, alpha=self.plan.lora_alpha, train_lm_head=True)
        return Policy(base, self.tokenizer, lora=spec, seed=self.seed + seed_offset)

    def reward_model(self, seed_offset: int = 0) -> Any:
        """A reward model on a copy of ``π``'s transformer with a fresh value head."""
        from oodpl.models.reward_model import RewardModel

        base = copy.deepcopy(self.sft_policy().lm)
        base.requires_grad_(True)
        return RewardModel(base, self.tokenizer, seed=self.seed + seed_offset)

    # ------------------------------------------------------------------ stages and logs
    @contextlib.contextmanager
    def stage(self, experiment: str, label: str) -> Iterator[None]:
        """A tracked training or evaluation stage of ``experiment``."""
        with self.tracker.stage(f"({experiment}) {label}"):
            yield

    def log(
        self,
        experiment: str,
        stage: str,
        history: Sequence[Mapping[str, Any]],
        *,
        key: str = "loss",
    ) -> None:
        """Copy each step's ``key`` to metrics.jsonl as ``<key>/<experiment>``, phase ``stage``."""
        if self.run is None:
            return
        for position, record in enumerate(history):
            value = record.get(key)
            if isinstance(value, (int, float)) and value == value:
                step = int(record.get("step", position + 1))
                self.run.log_metrics(step, {f"{key}/{experiment}": float(value)}, phase=stage)

    def prompts(self, domains: Sequence[str], limit: int) -> dict[str, list[str]]:
        """``{domain: evaluation prompts}`` (at most ``limit`` each, from eval_reference)."""
        return {d: [c.prompt for c in self.data.eval_reference[d][:limit]] for d in domains}


@contextlib.contextmanager
def cpu_threads() -> Iterator[int]:
    """Run tiny-model experiments with one intra-op CPU thread (restored afterwards).

    Models this small gain nothing from intra-op parallelism, while on a busy CPU extra threads
    make every step many times slower (measured: 40 SFT steps took 3 s with one thread, 60-77 s
    with two on a loaded 2-core machine). ``OMP_NUM_THREADS`` set by the user wins.
    """
    import torch

    before = torch.get_num_threads()
    wanted = before if os.environ.get("OMP_NUM_THREADS") else 1
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep the terminal to progress bars and tables: no per-checkpoint "Writing model shards"
    bars from transformers and no deprecation notice repeated for every engine built."""
    import warnings

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
            )
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def resolve_experiment_config(
    kind: str,
    config_file: Path | None,
    overrides: Sequence[str],
    *,
    output_dir: Path | None = None,
    name: str | None = None,
) -> RunConfig:
    """The resolved config of ``oodpl study|iterate`` (file, then ``--set``, then flags).

    The file's ``kind`` must be ``kind`` or absent; without a file the config is the schema's
    defaults plus the overrides.
    """
    from oodpl.cli.config.loader import load_config, parse_override
    from oodpl.cli.errors import ConfigError

    for text in overrides:
        key, value = parse_override(text)
        if key == "kind" and value.strip() != kind:
            raise ConfigError(f"--set kind={value.strip()} conflicts with 'oodpl {kind}'")
    if config_file is not None and config_file.is_file():
        import yaml

        try:
            written = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            written = None  # load_config reports it with file and line
        found = written.get("kind") if isinstance(written, dict) else None
        if found is not None and found != kind:
            raise ConfigError(
                f"kind {found!r} does not match 'oodpl {kind}'", source=str(config_file)
            )
    flags = [f"output_dir={output_dir}"] if output_dir is not None else []
    if name is not None:
        flags.append(f"name={name}")
    return load_config(config_file, [f"kind={kind}", *overrides, *flags])


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the non-missing values (``None`` when there are none)."""
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None


def std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (``None`` for fewer than two values)."""
    if len(values) < 2:
        return None
    centre = sum(values) / len(values)
    return (sum((v - centre) ** 2 for v in values) / (len(values) - 1)) ** 0.5


__all__ = [
    "EXPERIMENT_MEANINGS",
    "ORDER",
    "ModelPlan",
    "StageTracker",
    "Workbench",
    "cpu_threads",
    "mean",
    "quiet_libraries",
    "resolve_experiment_config",
    "std",
    "synthetic_data",
    "view",
]

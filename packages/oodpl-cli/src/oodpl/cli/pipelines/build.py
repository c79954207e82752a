"""Build what a run needs from its :class:`~oodpl.cli.config.RunConfig`.

Public API (used by ``oodpl train``/``eval`` and by the quickstart, study and iterate pipelines):

- :func:`build_data` -> :class:`RunData`: the run's records per domain and part (fine-tuning
  completions, training preferences, evaluation references and preferences), the training
  (in-distribution) and held-out (out-of-distribution) domains, and the gold reward when the data
  is the synthetic benchmark. ``data.source: synthetic`` is the built-in benchmark
  (:mod:`oodpl.data.synthetic`, sizes from ``data.sizes``); any other name is loaded with
  :func:`oodpl.data.registry.load` from ``data.path`` and split per domain by prompt
  (:func:`oodpl.data.splits.per_domain_splits`).
- :func:`build_tokenizer`: for a preset, a byte-level BPE tokenizer trained on every text of the
  run's data (all domains and parts, so runs on the same data share one tokenizer); for a
  checkpoint or local model directory, its own tokenizer.
- :func:`build_reward_model` / :func:`build_policy`: from a preset (random weights drawn from the
  run's seed) or a path (an oodpl checkpoint, a run directory, or a plain ``transformers``
  directory), with the config's LoRA adapter.
- :func:`count_steps` and :func:`build_engine_config`: optimizer steps and the
  :class:`oodpl.models.engine.EngineConfig` of a run.
- :func:`resolve_model_path`: a checkpoint path, accepting a run directory for its final
  checkpoint (``<run>/checkpoints/final``).
- :func:`user_errors`: turns the libraries' bad-input errors into one-line CLI errors.

Heavy imports (torch, transformers) happen inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from oodpl.cli.config.schema import LoraConfig, RunConfig, engine_kwargs
from oodpl.cli.errors import BadInputError, PathNotFoundError
from oodpl.cli.pipelines.rundata import (
    PARTS,
    SYNTHETIC_SOURCE,
    RunData,
    build_data,
    split_domains,
    user_errors,
)

if TYPE_CHECKING:  # pragma: no cover
    from oodpl.models.engine import EngineConfig
    from oodpl.models.lora import LoraSpec
    from oodpl.models.policy import Policy
    from oodpl.models.reward_model import RewardModel

FINAL_CHECKPOINT = "final"
CHECKPOINT_CONFIG = "oodpl_config.json"


# ---------------------------------------------------------------------------- models and paths
def resolve_model_path(path: str | Path, what: str = "model.path") -> Path:
    """``path`` as a model directory: an oodpl checkpoint, a run directory (its
    ``checkpoints/final``), or a plain ``transformers`` directory. Missing -> PathNotFoundError."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise PathNotFoundError(path, what)
    final = resolved / "checkpoints" / FINAL_CHECKPOINT
    if not (resolved / CHECKPOINT_CONFIG).is_file() and (final / CHECKPOINT_CONFIG).is_file():
        return final
    if (resolved / "config.yaml").is_file() and not (resolved / CHECKPOINT_CONFIG).is_file():
        raise BadInputError(
            f"{what}: run directory {resolved} has no final checkpoint "
            f"(checkpoints/{FINAL_CHECKPOINT}); did the run finish?"
        )
    return resolved


def is_oodpl_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds an oodpl checkpoint (``oodpl_config.json``)."""
    return (Path(path) / CHECKPOINT_CONFIG).is_file()


def torch_dtype(name: str) -> Any:
    """``torch.float32`` etc. from the config's dtype name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def lora_spec(lora: LoraConfig, *, policy: bool) -> LoraSpec | None:
    """The :class:`~oodpl.models.lora.LoraSpec` of ``model.lora`` (``None`` when disabled).

    Policies also train a copy of the LM head, reward models a value head ([OODPL]).
    """
    if not lora.enabled:
        return None
    from oodpl.models.lora import LoraSpec

    return LoraSpec(
        r=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=tuple(lora.targets) or None,
        train_lm_head=policy,
    )


def model_paths(config: RunConfig) -> dict[str, str]:
    """``{config key: path}`` of every model path a run config names."""
    paths = {
        "model.path": config.model.path,
        "train.init_from": config.train.init_from,
        f"train.{config.kind}.reward_model": model_source(config, "reward_model")
        if config.kind in ("ppo", "rjs")
        else None,
        "train.meta.reward_model": config.train.meta.reward_model
        if config.kind == "meta-test"
        else None,
    }
    return {key: path for key, path in paths.items() if path}


def check_model_paths(config: RunConfig) -> None:
    """:class:`PathNotFoundError` naming the key of the first model path that does not exist."""
    for key, path in model_paths(config).items():
        resolve_model_path(path, key)


def model_source(config: RunConfig, role: str) -> str | None:
    """Where the ``role`` ("policy" or "reward_model") of a run comes from; ``None`` = preset.

    Policies start from ``train.init_from`` (e.g. the SFT run) or ``model.path``; the reward model
    of ``rm`` and ``meta`` runs from ``model.path``; the reward model that PPO, RJS and
    meta-test *use* is ``train.<kind>.reward_model``.
    """
    if role == "policy":
        return config.train.init_from or config.model.path
    if role == "reward_model":
        external = {
            "ppo": config.train.ppo.reward_model,
            "rjs": config.train.rjs.reward_model,
            "meta-test": config.train.meta.reward_model,
        }.get(config.kind)
        return external or config.model.path
    raise ValueError(f"role must be 'policy' or 'reward_model', got {role!r}")


def build_tokenizer(
    config: RunConfig,
    data: RunData | None = None,
    *,
    source: str | None = None,
    what: str = "model.path",
):
    """The tokenizer of a run: ``source``'s own, or a BPE tokenizer trained on ``data``'s texts.

    ``source`` defaults to ``model.path``; with no source the model is a preset and ``data`` is
    required.
    """
    source = source if source is not None else config.model.path
    if source is not None:
        from oodpl.models.loading import load_tokenizer

        path = resolve_model_path(source, what)
        with user_errors(f"tokenizer of {path}"):
            return load_tokenizer(path, trust_remote_code=config.model.trust_remote_code)
    if data is None:
        raise ValueError("build_tokenizer: a preset needs the run's data to train a tokenizer on")
    from oodpl.models.tokenizer import train_bpe_tokenizer

    texts = data.texts()
    if not texts:
        raise BadInputError("data: no texts to train a tokenizer on (every part is empty)")
    return train_bpe_tokenizer(
        texts, vocab_size=config.model.vocab_size, model_max_length=config.model.max_length
    )


def _build(cls: Any, config: RunConfig, tokenizer: Any, path: str | None, *, policy: bool) -> Any:
    model = config.model
    lora = lora_spec(model.lora, policy=policy)
    what = "train.init_from" if policy and path == config.train.init_from else "model.path"
    if path is not None:
        resolved = resolve_model_path(path, what)
        with user_errors(f"{what} {resolved}"):
            if is_oodpl_checkpoint(resolved):
                return cls.load(resolved, attn_implementation=model.attn_implementation)
            return cls.from_pretrained(
                resolved,
                lora=lora,
                tokenizer=tokenizer,
                seed=config.seed,
                dtype=torch_dtype(model.dtype),
                attn_implementation=model.attn_implementation,
                trust_remote_code=model.trust_remote_code,
            )
    with user_errors("model.preset"):
        return cls.from_preset(
            model.preset,
            tokenizer,
            seed=config.seed,
            lora=lora,
            attn_implementation=model.attn_implementation,
            dtype=torch_dtype(model.dtype),
            max_length=model.max_length,
        )


def build_reward_model(
    config: RunConfig, tokenizer: Any, *, path: str | None = None
) -> RewardModel:
    """A :class:`RewardModel` from ``path`` (checkpoint, run dir, LM dir) or ``model.preset``.

    An oodpl checkpoint keeps its own LoRA and value head; a plain LM gets a fresh value head and
    the config's LoRA; a preset gets random weights drawn from ``config.seed``.
    """
    from oodpl.models.reward_model import RewardModel

    return _build(RewardModel, config, tokenizer, path, policy=False)


def load_reward_model(config: RunConfig, path: str, what: str, *, frozen: bool = True) -> Any:
    """A trained reward model from ``path`` (checkpoint, run directory or LM directory), its own
    tokenizer, in eval mode and (``frozen``) without gradients; errors name ``what``."""
    resolved = resolve_model_path(path, what)
    tokenizer = (
        None if is_oodpl_checkpoint(resolved) else build_tokenizer(config, source=path, what=what)
    )
    model = build_reward_model(config, tokenizer, path=path)
    if frozen:
        model.requires_grad_(False)
    model.eval()
    return model


def load_policy(config: RunConfig, path: str, what: str) -> Any:
    """A policy from ``path`` (checkpoint, run directory or LM directory) with its tokenizer."""
    resolved = resolve_model_path(path, what)
    tokenizer = (
        None if is_oodpl_checkpoint(resolved) else build_tokenizer(config, source=path, what=what)
    )
    return build_policy(config, tokenizer, path=path)


def build_policy(config: RunConfig, tokenizer: Any, *, path: str | None = None) -> Policy:
    """A :class:`Policy` from ``path`` (checkpoint, run dir, LM dir) or ``model.preset``."""
    from oodpl.models.policy import Policy

    return _build(Policy, config, tokenizer, path, policy=True)


# --------------------------------------------------------------------------------------- engine
def world_size() -> int:
    """Processes taking part (``WORLD_SIZE`` set by torchrun / the deepspeed launcher)."""
    from oodpl.models.engine.distributed import read_distributed_env

    return read_distributed_env().world_size


def global_batch_size(config: RunConfig, processes: int | None = None) -> int:
    """``batch_size * grad_accum * world_size``: examples per optimizer step."""
    processes = world_size() if processes is None else processes
    return config.train.batch_size * config.train.grad_accum * processes


def count_steps(config: RunConfig, n_items: int, *, processes: int | None = None) -> int:
    """Optimizer steps of a run: ``train.max_steps`` if set, else
    ``ceil(epochs * floor(n_items / global_batch))`` (at least 1)."""
    if config.train.max_steps:
        return config.train.max_steps
    batch = global_batch_size(config, processes)
    if n_items < batch:
        raise BadInputError(
            f"data: {n_items} training items are fewer than one global batch of {batch} "
            "(train.batch_size * train.grad_accum * processes); lower train.batch_size"
        )
    return max(1, math.ceil(config.train.epochs * (n_items // batch)))


def build_engine_config(config: RunConfig, *, max_steps: int) -> EngineConfig:
    """The :class:`oodpl.models.engine.EngineConfig` of a run (``engine`` + ``train`` sections)."""
    from oodpl.models.engine import EngineConfig

    return EngineConfig(**engine_kwargs(config, max_steps=max_steps))


def require_deepspeed(config: RunConfig) -> None:
    """One-line :class:`BadInputError` when ``engine.backend: deepspeed`` but it is missing."""
    if config.engine.backend != "deepspeed":
        return
    from oodpl.models.engine.deepspeed_engine import DeepSpeedUnavailableError
    from oodpl.models.engine.deepspeed_engine import require_deepspeed as import_deepspeed

    try:
        import_deepspeed()
    except DeepSpeedUnavailableError as exc:
        raise BadInputError(
            "DeepSpeed is not installed, but the run asks for it (--deepspeed / "
            f"engine.backend: deepspeed): pip install 'oodpl-models[deepspeed]' ({exc})"
        ) from None


__all__ = [
    "FINAL_CHECKPOINT",
    "PARTS",
    "SYNTHETIC_SOURCE",
    "RunData",
    "build_data",
    "build_engine_config",
    "build_policy",
    "build_reward_model",
    "build_tokenizer",
    "check_model_paths",
    "count_steps",
    "global_batch_size",
    "is_oodpl_checkpoint",
    "load_policy",
    "load_reward_model",
    "lora_spec",
    "model_paths",
    "model_source",
    "require_deepspeed",
    "resolve_model_path",
    "split_domains",
    "torch_dtype",
    "user_errors",
    "world_size",
]

"""Checkpoints of the sampling trainers (RJS: :func:`oodpl.models.trainers.rjs.train_rjs`; PPO:
:func:`oodpl.models.trainers.ppo.train_ppo`, see the end of this docstring).

A sampling trainer runs rounds: sample from the policy, build a training set from the samples
(RJS: the reward model's best of ``n`` per prompt), then take optimizer steps on it with the
engine loop (:func:`oodpl.models.engine.loop.train`, one engine for all rounds). Its checkpoints
are the engine loop's: ``<checkpoint_dir>/step-XXXXXXXX/`` (weights, optimizer, schedule, RNG
states, data position; safetensors + JSON, written in a staging directory and renamed, then
``latest`` replaced atomically, see :mod:`oodpl.models.engine.state`), saved every
``checkpoint_every`` optimizer steps and at the end of every round. The round's bookkeeping
travels as the loop's ``trainer_state`` in the state's ``extra.json`` (JSON, no pickle)::

    {"format": "oodpl-sampling-state", "version": 1, "trainer": "rjs",
     "fingerprint": {...},          what a resumed run must share with the saved one
     "round": t,                    the round being fine-tuned (0-based)
     "round_start_step": s,         the engine's global step when round t's fine-tuning began
     "data": {"selected": [{"prompt", "response"}, ...],   round t's training set
              "rounds": [{"iteration", "mean_reward", ...}, ...]}}   round records logged so far

Resuming reads that state first (so a resume in the middle of round ``t`` fine-tunes on the
saved training set instead of sampling again), then lets the loop restore the engine and its
data position and finish the round's ``steps_per_iteration`` steps (none when the state was
saved at the end of the round); later rounds sample as an uninterrupted run would (their seeds
depend only on the round, the loop reseeds the RNGs at each round's start). The fingerprint
(RJS: ``n_samples``, ``steps_per_iteration``, ``normalize``, ``generation``,
``reward_batch_size``, ``max_length``, ``max_prompt_length``, ``seed``, the prompts' count and
SHA-256) must equal the saved one; ``iterations`` may grow. The reward model and the engine
settings other than those the loop checks (global batch size, seed) are the caller's to keep.

PPO takes no engine-loop steps: :func:`save_engine_checkpoint` writes the same engine state
(the actor-critic's weights, i.e. policy and value head, optimizer, schedule, RNG) after every
``checkpoint_every``-th iteration and after the last, with ``trainer: "ppo"``, ``round`` = the
iterations done and ``data`` = ``{"generator": the prompt-order/minibatch generator's state
(bytes as ints), "order": the prompt indices not yet used, "micro_batches": micro-batches so far,
"history": the iteration records so far}``. A state is written only on an accumulation boundary
(``micro_batches % grad_accum == 0``; always with ``grad_accum = 1``). The PPO fingerprint: every
:class:`PPOConfig` field except ``iterations`` (which may grow), the prompts' count and SHA-256,
and the engine's ``micro_batch_size`` and ``grad_accum``. PPO has no adaptive KL controller
(``kl_coef`` is fixed and fingerprinted). The reference policy is a copy of the policy passed
in, so a resumed run must be given the same initial policy.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from oodpl.models.engine.base import TrainingEngine
from oodpl.models.engine.loop import checkpoint_name, point_latest, resolve_checkpoint
from oodpl.models.engine.state import EngineStateError, read_json
from oodpl.models.trainers.meta_checkpoint import check_fingerprint

SAMPLING_STATE_FORMAT = "oodpl-sampling-state"
SAMPLING_STATE_VERSION = 1
EXTRA_FILE = "extra.json"
RJS_FIELDS = (
    "n_samples",
    "steps_per_iteration",
    "normalize",
    "generation",
    "reward_batch_size",
    "max_length",
    "max_prompt_length",
    "seed",
)


def prompts_digest(prompts: Sequence[str]) -> str:
    """SHA-256 (hex) of the prompts as a JSON list: identifies the prompt set and its order."""
    text = json.dumps(list(prompts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value


def rjs_fingerprint(config: Any, prompts: Sequence[str]) -> dict[str, Any]:
    """What a resumed RJS run must share with the saved one (see the module docstring)."""
    out = {name: _plain(getattr(config, name)) for name in RJS_FIELDS}
    out["n_prompts"] = len(prompts)
    out["prompts_sha256"] = prompts_digest(prompts)
    return out


PPO_FIELDS = (
    "rollout_size",
    "ppo_epochs",
    "kl_coef",
    "gamma",
    "lam",
    "clip_range",
    "value_clip_range",
    "value_coef",
    "whiten_advantages",
    "generation",
    "reward_batch_size",
    "max_length",
    "max_prompt_length",
    "seed",
)


def ppo_fingerprint(config: Any, prompts: Sequence[str], engine: TrainingEngine) -> dict[str, Any]:
    """What a resumed PPO run must share with the saved one (see the module docstring)."""
    out = {name: _plain(getattr(config, name)) for name in PPO_FIELDS}
    out["n_prompts"] = len(prompts)
    out["prompts_sha256"] = prompts_digest(prompts)
    out["micro_batch_size"] = engine.config.micro_batch_size
    out["grad_accum"] = engine.config.grad_accum
    return out


@dataclass
class RoundState:
    """The round bookkeeping of a sampling trainer (an engine-loop ``TrainerState``).

    Attributes:
        trainer: which trainer wrote it (``"rjs"``); a state of another trainer is refused.
        fingerprint: :func:`rjs_fingerprint` of the run.
        round: the round whose fine-tuning is under way (0-based).
        round_start_step: the engine's ``global_step`` when that round's fine-tuning began.
        data: trainer-specific JSON (RJS: ``selected`` and ``rounds``).
    """

    trainer: str
    fingerprint: dict[str, Any]
    round: int = 0
    round_start_step: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def begin(self, round_: int, start_step: int, **data: Any) -> None:
        """Record that round ``round_`` starts fine-tuning at ``start_step`` with ``data``."""
        self.round, self.round_start_step, self.data = round_, start_step, dict(data)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": SAMPLING_STATE_FORMAT,
            "version": SAMPLING_STATE_VERSION,
            "trainer": self.trainer,
            "fingerprint": dict(self.fingerprint),
            "round": self.round,
            "round_start_step": self.round_start_step,
            "data": dict(self.data),
        }

    def load_state_dict(
        self, state: Mapping[str, Any], where: Path | str = "trainer_state"
    ) -> None:
        """Check ``state`` (format, trainer, fingerprint, fields) and take its round and data;
        ``EngineStateError`` / ``ValueError`` naming ``where`` and the field."""
        if not isinstance(state, Mapping) or state.get("format") != SAMPLING_STATE_FORMAT:
            raise EngineStateError(f"{where}: trainer_state is not an oodpl sampling-trainer state")
        if state.get("version") != SAMPLING_STATE_VERSION:
            raise EngineStateError(f"{where}: version {state.get('version')!r} is not supported")
        if state.get("trainer") != self.trainer:
            raise ValueError(
                f"{where}: cannot resume, the checkpoint was written by trainer "
                f"{state.get('trainer')!r}, not {self.trainer!r}"
            )
        check_fingerprint(state.get("fingerprint"), self.fingerprint, Path(where))
        for name in ("round", "round_start_step"):
            value = state.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EngineStateError(f"{where}: the field {name!r} must be an int >= 0")
        if not isinstance(state.get("data"), Mapping):
            raise EngineStateError(f"{where}: the field 'data' is missing or not a mapping")
        self.round, self.round_start_step = state["round"], state["round_start_step"]
        self.data = dict(state["data"])


def load_round_state(resume_from: str | Path, state: RoundState) -> Path:
    """Read the round bookkeeping of the engine state at ``resume_from`` (a state directory or a
    root with ``latest``) into ``state``; returns the state directory."""
    state_dir = resolve_checkpoint(resume_from)
    where = state_dir / EXTRA_FILE
    extra = read_json(where)
    if not isinstance(extra, Mapping) or "trainer_state" not in extra:
        raise EngineStateError(
            f"{where}: holds no trainer_state (not a checkpoint of a sampling trainer)"
        )
    state.load_state_dict(extra["trainer_state"], where)
    return state_dir


def save_engine_checkpoint(
    engine: TrainingEngine, root: str | Path, state: RoundState, *, keep_last: int | None
) -> Path:
    """Write the engine state with ``state`` as its ``trainer_state`` to
    ``root/step-XXXXXXXX`` (staged, renamed), point ``root/latest`` at it and prune to
    ``keep_last`` states (as the engine loop does); collective."""
    root = Path(root)
    name = checkpoint_name(engine.global_step)
    path = engine.save_state(root / name, extra={"trainer_state": state.state_dict()})
    if engine.is_main:
        point_latest(root, name, keep_last=keep_last)
    engine.barrier()
    return path


def ppo_data(state: RoundState, where: Path, n_prompts: int) -> dict[str, Any]:
    """The checked ``data`` of a PPO state: ``generator`` (a uint8 tensor), ``order``,
    ``micro_batches``, ``history``; ``EngineStateError`` naming ``where`` and the field."""
    data = state.data
    generator = data.get("generator")
    if not isinstance(generator, list) or not all(
        isinstance(v, int) and 0 <= v < 256 for v in generator
    ):
        raise EngineStateError(f"{where}: the field 'data.generator' must be a list of bytes")
    order = data.get("order")
    if not isinstance(order, list) or not all(
        isinstance(i, int) and 0 <= i < n_prompts for i in order
    ):
        raise EngineStateError(f"{where}: the field 'data.order' must list prompt indices")
    micro = data.get("micro_batches")
    if isinstance(micro, bool) or not isinstance(micro, int) or micro < 0:
        raise EngineStateError(f"{where}: the field 'data.micro_batches' must be an int >= 0")
    history = data.get("history")
    if not isinstance(history, list) or len(history) != state.round:
        raise EngineStateError(
            f"{where}: the field 'data.history' must hold the {state.round} iterations done"
        )
    return {
        "generator": torch.tensor(generator, dtype=torch.uint8),
        "order": list(order),
        "micro_batches": micro,
        "history": [dict(r) for r in history],
    }


def rjs_round_data(state: RoundState, where: Path) -> tuple[list[dict[str, str]], list[dict]]:
    """``(selected, rounds)`` of an RJS round state, checked: ``EngineStateError`` naming
    ``where`` and the field."""
    selected, rounds = state.data.get("selected"), state.data.get("rounds")
    if not isinstance(selected, list) or not selected:
        raise EngineStateError(f"{where}: the field 'data.selected' must be a non-empty list")
    for index, item in enumerate(selected):
        if not (
            isinstance(item, Mapping)
            and isinstance(item.get("prompt"), str)
            and isinstance(item.get("response"), str)
        ):
            raise EngineStateError(
                f"{where}: data.selected[{index}] must be {{'prompt': str, 'response': str}}"
            )
    if not isinstance(rounds, list) or len(rounds) != state.round + 1:
        raise EngineStateError(
            f"{where}: the field 'data.rounds' must list the {state.round + 1} rounds so far"
        )
    if any(not isinstance(r, Mapping) or r.get("iteration") != i for i, r in enumerate(rounds)):
        raise EngineStateError(f"{where}: data.rounds are not the rounds 0..{state.round}")
    selected = [{"prompt": s["prompt"], "response": s["response"]} for s in selected]
    return selected, [dict(r) for r in rounds]


__all__ = [
    "PPO_FIELDS",
    "RJS_FIELDS",
    "RoundState",
    "load_round_state",
    "ppo_data",
    "ppo_fingerprint",
    "prompts_digest",
    "rjs_fingerprint",
    "rjs_round_data",
    "save_engine_checkpoint",
]

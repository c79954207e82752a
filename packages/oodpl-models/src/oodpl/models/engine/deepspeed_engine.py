"""DeepSpeed backend: ZeRO stages 0-3, optional CPU offload, bf16/fp16, gradient accumulation.

The engine builds the DeepSpeed config from :class:`EngineConfig` (:func:`deepspeed_config`),
hands DeepSpeed the same AdamW optimizer and ``LambdaLR`` schedule as the torch backend (so both
backends apply the same update rule), and calls ``deepspeed.initialize``. Gradient reduction,
ZeRO partitioning, loss scaling and clipping are DeepSpeed's.

Running on CPU (no CUDA): ``DS_ACCELERATOR=cpu`` is set when unset, and the process group uses
the accelerator's communication backend (``gloo``, or ``ccl`` when oneCCL is installed). Launch
with ``torchrun --nproc_per_node 2 script.py`` (or ``python -m torch.distributed.run``), or with
``deepspeed --num_gpus 2 script.py`` (the launcher then passes ``--local_rank=N``; add
``--no_local_rank`` to suppress it). The first CPU run JIT-compiles DeepSpeed's shared-memory
communication op (``deepspeed_shm_comm``, ~30 s, cached under ``~/.cache/torch_extensions``).

Checkpoints: ``save_state`` stores DeepSpeed's own ``save_checkpoint`` output (model, ZeRO
optimizer partitions, scheduler; ``torch.save``/pickle inside DeepSpeed) plus our JSON/safetensors
files (RNG, data position). ``consolidated_state_dict`` gathers full fp32 weights (for ZeRO-3 via
``deepspeed.utils.safe_get_full_fp32_param`` and ``deepspeed.zero.GatheredParameters``), and
:func:`consolidate_deepspeed_state` converts a saved state offline, in one process, with
DeepSpeed's ``zero_to_fp32`` utilities.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oodpl.models.engine import state as st
from oodpl.models.engine.base import (
    MethodDispatcher,
    StepOutcome,
    TrainingEngine,
    build_optimizer,
    build_scheduler,
    check_loss,
    enable_gradient_checkpointing,
    strip_dispatch_prefix,
)
from oodpl.models.engine.config import EngineConfig
from oodpl.models.engine.distributed import ensure_single_process_env

DEEPSPEED_TAG = "state"
INSTALL_HINT = (
    "DeepSpeed is not installed: pip install 'oodpl-models[deepspeed]' "
    "(or use EngineConfig(backend='torch'))"
)
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeepSpeedUnavailableError(ImportError):
    """``backend='deepspeed'`` was requested but ``import deepspeed`` fails."""


def require_deepspeed() -> Any:
    """Import and return ``deepspeed``, or raise :class:`DeepSpeedUnavailableError` (one line)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as err:
        raise DeepSpeedUnavailableError(f"{INSTALL_HINT} [{err}]") from None
    return deepspeed


def deepspeed_config(config: EngineConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config equivalent to ``config`` on ``world_size`` processes.

    ``config.deepspeed_overrides`` is merged in last (nested dicts merged key by key).
    """
    zero: dict[str, Any] = {"stage": config.zero_stage}
    if config.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if config.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "train_batch_size": config.global_batch_size(world_size),
        "gradient_clipping": float(config.max_grad_norm) if config.clip_enabled else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {
            "enabled": config.precision == "fp16",
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        # Our own torch AdamW is handed to DeepSpeed (same update rule as the torch backend);
        # with offload DeepSpeed would otherwise insist on its compiled DeepSpeedCPUAdam.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    return _merge(out, dict(config.deepspeed_overrides or {}))


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return type(obj)({k: _cast_floating(v, dtype) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_cast_floating(v, dtype) for v in obj)
    return obj


class DeepSpeedTrainingEngine(TrainingEngine):
    """The DeepSpeed :class:`TrainingEngine` (see the module docstring)."""

    backend = "deepspeed"

    def __init__(
        self,
        module: nn.Module,
        config: EngineConfig,
        *,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(config)
        self._check_backend_and_module(module)
        ds = require_deepspeed()
        from deepspeed.accelerator import get_accelerator

        accelerator = get_accelerator()
        if config.precision == "fp16" and not accelerator.is_fp16_supported():
            raise ValueError(
                f"EngineConfig.precision='fp16' is not supported by DeepSpeed's "
                f"{accelerator.device_name()} accelerator on this machine; use 'bf16' or 'fp32'"
            )
        import torch.distributed as dist

        if not dist.is_initialized():
            if "WORLD_SIZE" not in os.environ:
                ensure_single_process_env()
            ds.init_distributed(
                dist_backend=process_group_backend or accelerator.communication_backend_name()
            )
        self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        self._deepspeed = ds
        self._module = module
        if config.grad_checkpointing:
            enable_gradient_checkpointing(module)
        optimizer = build_optimizer(module, config)
        scheduler = build_scheduler(optimizer, config)
        self.ds_config = deepspeed_config(config, self._world_size)
        self._ds, _, _, self.scheduler = ds.initialize(
            model=MethodDispatcher(module),
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=self.ds_config,
            dist_init_required=False,
        )
        self._half = _HALF.get(config.precision)

    # --- identity -------------------------------------------------------------------------
    @property
    def ds_engine(self) -> Any:
        """The underlying ``deepspeed.DeepSpeedEngine``."""
        return self._ds

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def device(self) -> torch.device:
        return torch.device(self._ds.device)

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def global_step(self) -> int:
        return int(self._ds.global_steps - self._ds.skipped_steps)

    @property
    def lr(self) -> float:
        return float(self._ds.get_lr()[0])

    @property
    def is_accumulation_boundary(self) -> bool:
        return bool(self._ds.is_gradient_accumulation_boundary())

    # --- training ---------------------------------------------------------------------------
    def run_forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._half is not None:
            args, kwargs = _cast_floating(args, self._half), _cast_floating(kwargs, self._half)
        return self._ds(method, *args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self._ds.backward(check_loss(loss, step=self.global_step))

    def step(self) -> StepOutcome:
        boundary = self.is_accumulation_boundary
        lr = self.lr
        if not boundary:
            self._ds.step()
            return StepOutcome(stepped=False, global_step=self.global_step, lr=lr)
        own_norm = self._own_grad_norm()
        skipped_before = self._ds.skipped_steps
        self._ds.step()
        skipped = self._ds.skipped_steps > skipped_before
        norm = self._ds.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else own_norm
        if grad_norm is not None and not skipped and not torch.isfinite(torch.tensor(grad_norm)):
            raise FloatingPointError(f"gradient norm is {grad_norm} at step {self.global_step}")
        return StepOutcome(
            stepped=not skipped,
            global_step=self.global_step,
            lr=lr,
            grad_norm=grad_norm,
            skipped=skipped,
        )

    def _own_grad_norm(self) -> float | None:
        """Gradient norm for ZeRO-0 fp32, where DeepSpeed does not record one (grads complete)."""
        if self.config.zero_stage != 0 or self.config.precision != "fp32":
            return None
        grads = [p.grad.float() for p in self._module.parameters() if p.grad is not None]
        if not grads:
            return None
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    # --- state --------------------------------------------------------------------------------
    def save_state(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        if self._ds.micro_steps % self.config.grad_accum:
            raise RuntimeError(
                "save_state called inside an accumulation window: call it after step()"
            )

        def write_backend_files(staging: Path) -> None:
            self._ds.save_checkpoint(
                str(staging / "deepspeed"), tag=DEEPSPEED_TAG, client_state={}, save_latest=True
            )

        return self._write_state(directory, extra, write_backend_files)

    def load_state(self, directory: str | Path) -> dict[str, Any]:
        """Restore a state; call on a freshly built engine (DeepSpeed's ZeRO-3 requirement)."""
        directory = Path(directory)
        meta, extra = st.read_engine_meta(directory, backend=self.backend)
        saved_stage = int(meta.config.get("zero_stage", 0))
        if saved_stage > 0 and meta.world_size != self._world_size:
            raise st.EngineStateError(
                f"{directory / 'engine.json'}: ZeRO-{saved_stage} state written by "
                f"{meta.world_size} processes cannot be resumed by {self._world_size}"
            )
        ds_dir = directory / "deepspeed"
        if not (ds_dir / DEEPSPEED_TAG).is_dir():
            raise st.EngineStateError(f"DeepSpeed checkpoint is missing: {ds_dir / DEEPSPEED_TAG}")
        load_path, _ = self._ds.load_checkpoint(
            str(ds_dir),
            tag=DEEPSPEED_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise st.EngineStateError(f"DeepSpeed could not load the checkpoint in {ds_dir}")
        st.load_rng(directory, self._rank, meta.world_size)
        return extra

    def gathered_parameters(self) -> Any:
        return self._deepspeed.zero.GatheredParameters(
            list(self._module.parameters()), modifier_rank=None, enabled=self.config.zero_stage == 3
        )

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 weights on CPU, on every rank (collective).

        Trainable parameters come from the fp32 master copies
        (``deepspeed.utils.safe_get_full_fp32_param``); frozen parameters and buffers from the
        module (gathered under ZeRO-3); every floating tensor is returned as fp32.
        """
        from deepspeed.utils import safe_get_full_fp32_param

        module = self._module
        masters: dict[int, torch.Tensor] = {}
        for _, param in module.named_parameters():
            if param.requires_grad and id(param) not in masters:
                full = safe_get_full_fp32_param(param)
                if full is not None:
                    masters[id(param)] = full.detach().float().cpu().clone()
        out: dict[str, torch.Tensor] = {}
        with self.gathered_parameters():
            for key, value in module.state_dict(keep_vars=True).items():
                if id(value) in masters:
                    out[key] = masters[id(value)].clone()
                else:
                    dtype = torch.float32 if value.is_floating_point() else value.dtype
                    out[key] = value.detach().to("cpu", dtype=dtype).clone()
        return out


def consolidate_deepspeed_state(
    state_dir: str | Path, output: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Full fp32 ``state_dict`` from a DeepSpeed engine state, in one process (no launcher).

    Uses ``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`` for ZeRO 1-3
    (merging every rank's optimizer partition); for ZeRO-0 reads the module weights DeepSpeed
    saved. Keys match the user's module. When ``output`` is given the dict is also written there
    as safetensors. Note: DeepSpeed's checkpoint files are pickles (``torch.load``).
    """
    require_deepspeed()
    state_dir = Path(state_dir)
    meta, _ = st.read_engine_meta(state_dir, backend="deepspeed")
    ds_dir = state_dir / "deepspeed"
    if int(meta.config.get("zero_stage", 0)) > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        raw = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=DEEPSPEED_TAG)
    else:
        model_file = ds_dir / DEEPSPEED_TAG / "mp_rank_00_model_states.pt"
        if not model_file.is_file():
            raise st.EngineStateError(f"DeepSpeed model file is missing: {model_file}")
        raw = torch.load(model_file, map_location="cpu", weights_only=False)["module"]
    state = {
        k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.cpu()
        for k, v in strip_dispatch_prefix(raw).items()
    }
    if output is not None:
        from safetensors.torch import save_file

        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(output))
    return state

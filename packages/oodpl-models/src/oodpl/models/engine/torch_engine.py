"""Plain-PyTorch backend: one process, or DistributedDataParallel when launched with several.

Per micro-batch ``j`` of ``k = grad_accum`` the engine runs ``backward(L_j / k)`` (under
``DDP.no_sync`` except on the boundary, where DDP all-reduces the mean over ranks); on the boundary
it computes ``n = ||g||_2`` over all trainable gradients, clips ``g <- g * min(1, c / (n + 1e-6))``
(``torch.nn.utils.clip_grad_norm_``), applies AdamW, advances the schedule and clears gradients.
Mixed precision: ``bf16``/``fp16`` run the forward under ``torch.autocast`` with fp32 master
weights; fp16 adds a ``GradScaler`` (an overflowing step is skipped and reported).
"""

from __future__ import annotations

import contextlib
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
)
from oodpl.models.engine.config import EngineConfig
from oodpl.models.engine.distributed import init_process_group

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchEngine(TrainingEngine):
    """The plain-PyTorch :class:`TrainingEngine`."""

    backend = "torch"

    def __init__(
        self,
        module: nn.Module,
        config: EngineConfig,
        *,
        device: torch.device | str | None = None,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(config)
        self._check_backend_and_module(module)
        env = init_process_group(process_group_backend)
        self._rank, self._world_size = env.rank, env.world_size
        if device is None:
            device = f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self._module = module.to(self._device)
        if config.grad_checkpointing:
            enable_gradient_checkpointing(self._module)
        self.optimizer = build_optimizer(self._module, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self._params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._dispatcher = MethodDispatcher(self._module)
        self._ddp: nn.parallel.DistributedDataParallel | None = None
        if self._world_size > 1:
            ids = [self._device.index] if self._device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(self._dispatcher, device_ids=ids)
        self._scaler = (
            torch.amp.GradScaler(self._device.type) if config.precision == "fp16" else None
        )
        self._micro = 0  # backward calls in the current accumulation window
        self._global_step = 0

    # --- identity -------------------------------------------------------------------------
    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @property
    def global_step(self) -> int:
        return self._global_step

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def is_accumulation_boundary(self) -> bool:
        return self._micro + 1 >= self.config.grad_accum

    # --- training ---------------------------------------------------------------------------
    def run_forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        sync = (
            contextlib.nullcontext()
            if self._ddp is None or self.is_accumulation_boundary
            else self._ddp.no_sync()
        )
        dtype = _AUTOCAST_DTYPES.get(self.config.precision)
        cast = (
            torch.autocast(device_type=self._device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with sync, cast:
            if self._ddp is not None:
                return self._ddp(method, *args, **kwargs)
            return self._dispatcher(method, *args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        loss = check_loss(loss, step=self._global_step).float() / self.config.grad_accum
        if self._scaler is not None:
            loss = self._scaler.scale(loss)
        loss.backward()
        self._micro += 1

    def step(self) -> StepOutcome:
        if self._micro < self.config.grad_accum:
            return StepOutcome(stepped=False, global_step=self._global_step, lr=self.lr)
        lr = self.lr
        if self._scaler is not None:
            self._scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self._params if p.grad is not None]
        if self.config.clip_enabled:
            norm = torch.nn.utils.clip_grad_norm_(self._params, float(self.config.max_grad_norm))
        elif grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
        else:  # no trainable parameter took part in the loss
            norm = torch.zeros(())
        grad_norm = float(norm)
        skipped = False
        if self._scaler is not None:
            scale_before = self._scaler.get_scale()
            self._scaler.step(self.optimizer)
            self._scaler.update()
            skipped = self._scaler.get_scale() < scale_before
        else:
            if not torch.isfinite(norm):
                raise FloatingPointError(
                    f"gradient norm is {grad_norm} at optimizer step {self._global_step}"
                )
            self.optimizer.step()
        if not skipped:
            self.scheduler.step()
            self._global_step += 1
        self.optimizer.zero_grad(set_to_none=True)
        self._micro = 0
        return StepOutcome(
            stepped=not skipped,
            global_step=self._global_step,
            lr=lr,
            grad_norm=grad_norm,
            skipped=skipped,
        )

    # --- state --------------------------------------------------------------------------------
    def save_state(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        from safetensors.torch import save_model

        if self._micro:
            raise RuntimeError(
                "save_state called in the middle of an accumulation window "
                f"({self._micro}/{self.config.grad_accum} micro-batches): call it after step()"
            )

        def write_backend_files(staging: Path) -> None:
            if self.is_main:
                save_model(self._module, str(staging / "model.safetensors"))
                st.save_optimizer(staging, self.optimizer)
                st.write_json(staging / "scheduler.json", self.scheduler.state_dict())
                if self._scaler is not None:
                    st.write_json(staging / "grad_scaler.json", self._scaler.state_dict())

        return self._write_state(directory, extra, write_backend_files)

    def load_state(self, directory: str | Path) -> dict[str, Any]:
        from safetensors.torch import load_model

        directory = Path(directory)
        meta, extra = st.read_engine_meta(directory, backend=self.backend)
        weights = directory / "model.safetensors"
        if not weights.is_file():
            raise st.EngineStateError(f"training state file is missing: {weights}")
        load_model(self._module, str(weights), strict=True, device=str(self._device))
        st.load_optimizer(directory, self.optimizer)
        self.scheduler.load_state_dict(st.read_json(directory / "scheduler.json"))
        if self._scaler is not None and (directory / "grad_scaler.json").is_file():
            self._scaler.load_state_dict(st.read_json(directory / "grad_scaler.json"))
        st.load_rng(directory, self._rank, meta.world_size)
        self._global_step = meta.global_step
        self._micro = 0
        self.optimizer.zero_grad(set_to_none=True)
        return extra

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._module.state_dict().items()}

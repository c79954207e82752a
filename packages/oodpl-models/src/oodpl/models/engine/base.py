"""The ``TrainingEngine`` interface shared by the PyTorch and DeepSpeed backends.

A trainer never touches DDP or DeepSpeed directly. It asks the engine for ``engine.model`` (a
:class:`ModelHandle`), computes a loss with it, and calls ``engine.backward(loss)`` then
``engine.step()`` once per micro-batch. The engine

* scales each micro-batch loss by ``1 / grad_accum``, so that after ``k`` micro-batches of equal
  size the accumulated gradient is the gradient of the mean loss over all ``k * b`` examples,
  ``g = (1/k) sum_j grad L_j``; with ``W`` processes the gradient is further averaged over ranks,
  ``g = (1/(kW)) sum_{r,j} grad L_{r,j}`` (the gradient of the global-batch mean);
* on the accumulation boundary clips the global gradient norm to ``max_grad_norm``
  (``g <- g * min(1, c / ||g||_2)``), applies one AdamW step, advances the learning-rate schedule
  and clears the gradients.

Calls through the handle (``engine.model(x)``, ``engine.model.rewards(batch)``, any bound method
of the wrapped module) run as the *forward* of the backend's wrapper, because DDP synchronises
gradients and DeepSpeed gathers ZeRO-3 partitions and scales losses only for work that passes
through their ``forward``. A thin dispatcher module (:class:`MethodDispatcher`) makes any method
callable as that forward. Inside a method, calls to ``self.other_method`` are plain Python.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oodpl.models.engine import state as st
from oodpl.models.engine.config import EngineConfig

DISPATCH_PREFIX = "wrapped."


class MethodDispatcher(nn.Module):
    """``forward(method, *args, **kwargs) = getattr(wrapped, method)(*args, **kwargs)``.

    Backends wrap this module (DDP, DeepSpeed) so that any method of the user's module runs as
    the wrapper's forward. Its state-dict keys carry the prefix ``"wrapped."``, which
    :func:`strip_dispatch_prefix` removes.
    """

    def __init__(self, wrapped: nn.Module) -> None:
        super().__init__()
        self.wrapped = wrapped

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.wrapped, method)(*args, **kwargs)


def strip_dispatch_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the ``"wrapped."`` prefix that :class:`MethodDispatcher` adds to state-dict keys."""
    n = len(DISPATCH_PREFIX)
    return {(k[n:] if k.startswith(DISPATCH_PREFIX) else k): v for k, v in state.items()}


class ModelHandle:
    """What ``loss_fn(model, batch)`` receives: the user's module, called through the engine.

    ``handle(*args)`` runs ``module.forward``; ``handle.some_method(*args)`` runs
    ``module.some_method`` as the backend's forward; other attributes (sub-modules, config,
    plain values) are returned unchanged from the wrapped module.
    """

    __slots__ = ("_engine",)

    def __init__(self, engine: TrainingEngine) -> None:
        self._engine = engine

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._engine.run_forward("forward", *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._engine.module, name)
        if inspect.ismethod(attr) and attr.__self__ is self._engine.module:
            return functools.partial(self._engine.run_forward, name)
        return attr

    def __repr__(self) -> str:
        return f"ModelHandle({type(self._engine.module).__name__}, backend={self._engine.backend})"


@dataclass(frozen=True)
class StepOutcome:
    """Result of :meth:`TrainingEngine.step` after one micro-batch.

    Attributes:
        stepped: whether this call completed an accumulation window and applied an update.
        global_step: optimizer steps taken so far (after this call).
        lr: learning rate used by the update just applied (or by the next update if none).
        grad_norm: global gradient 2-norm before clipping (``None`` when no update ran).
        skipped: True when fp16 loss scaling found an overflow and skipped the update.
    """

    stepped: bool
    global_step: int
    lr: float
    grad_norm: float | None = None
    skipped: bool = False


def trainable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs with ``requires_grad``; ``ValueError`` when there are none."""
    params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"model of type {type(module).__name__} has no parameter with requires_grad=True: "
            "nothing to train"
        )
    return params


def build_optimizer(module: nn.Module, config: EngineConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (decoupled weight decay, Loshchilov & Hutter 2019).

    Two parameter groups: weight decay on parameters with ``ndim >= 2`` (weight matrices,
    embeddings), none on biases and normalisation weights (``ndim < 2``). Implementation by
    ``config.optimizer_impl`` (fused kernel by default where the device has one).
    """
    params = trainable_parameters(module)
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = {
        "lr": config.lr,
        "betas": config.betas,
        "eps": config.eps,
        "weight_decay": config.weight_decay,
    }
    impl = getattr(config, "optimizer_impl", "auto")
    if impl == "foreach":
        return torch.optim.AdamW(groups, foreach=True, **kwargs)
    try:  # AdamW checks at construction that every parameter's device/dtype has a fused kernel
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except RuntimeError as error:
        if impl == "fused":
            raise ValueError(
                f"EngineConfig.optimizer_impl='fused' is unsupported here: {error}"
            ) from error
        return torch.optim.AdamW(groups, foreach=None, **kwargs)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: EngineConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with multiplier :func:`oodpl.models.engine.config.lr_multiplier`.

    The multiplier is a ``functools.partial`` (not a lambda) so its state serialises to JSON.
    """
    from oodpl.models.engine.config import lr_multiplier

    fn = functools.partial(
        lr_multiplier,
        scheduler=config.scheduler,
        warmup_steps=config.warmup_steps,
        max_steps=config.max_steps,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)


def enable_gradient_checkpointing(module: nn.Module) -> list[str]:
    """Turn on activation checkpointing in the module or its outermost sub-modules offering it.

    Looks for ``activation_checkpointing_enable`` (transformers >= 5) or else
    ``gradient_checkpointing_enable`` and requests non-reentrant checkpointing where the method
    takes ``*_checkpointing_kwargs``. Returns the names of the modules it was enabled on;
    ``ValueError`` when no module offers it.
    """
    enabled: list[str] = []
    for name, sub in module.named_modules():
        if any(e == "" or name.startswith(e + ".") for e in enabled):
            continue  # an enclosing module already covers it
        for method_name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
            method = getattr(sub, method_name, None)
            if callable(method):
                kwargs_name = method_name.replace("_enable", "_kwargs")
                if kwargs_name in inspect.signature(method).parameters:
                    method(**{kwargs_name: {"use_reentrant": False}})
                else:
                    method()
                enabled.append(name)
                break
    if not enabled:
        raise ValueError(
            "EngineConfig.grad_checkpointing=True, but neither the model "
            f"({type(module).__name__}) nor any of its sub-modules has an "
            "activation_checkpointing_enable() or gradient_checkpointing_enable() method"
        )
    return enabled


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts / lists / tuples (and dataclass-free mappings)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return type(obj)({k: move_to_device(v, device) for k, v in obj.items()})  # type: ignore[call-arg]
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    if hasattr(obj, "to") and callable(obj.to) and hasattr(obj, "keys"):
        return obj.to(device)  # transformers.BatchEncoding
    return obj


def check_loss(loss: object, *, step: int) -> torch.Tensor:
    """The loss as a scalar tensor with a graph; ``ValueError``/``TypeError`` otherwise.

    A non-finite loss raises ``FloatingPointError`` naming the optimizer step, instead of
    silently writing NaN into the parameters.
    """
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"loss must be a torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise ValueError(f"loss must be a scalar tensor, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise ValueError(
            "loss does not require grad: it is not connected to any trainable parameter"
        )
    if not bool(torch.isfinite(loss.detach()).all()):
        raise FloatingPointError(f"loss is {loss.item()} at optimizer step {step}")
    return loss.reshape(())


class TrainingEngine(ABC):
    """One model, one optimizer, one schedule, on one or several processes.

    Properties: ``model`` (a :class:`ModelHandle`), ``module`` (the user's ``nn.Module``),
    ``device``, ``rank``, ``world_size``, ``is_main``, ``global_step``, ``lr``,
    ``is_accumulation_boundary``. Verbs: :meth:`backward`, :meth:`step`, :meth:`train_step`,
    :meth:`save_state`, :meth:`load_state`, :meth:`consolidated_state_dict`,
    :meth:`save_consolidated`, :meth:`all_reduce_mean`, :meth:`barrier`.
    """

    backend: str = "abstract"

    def __init__(self, config: EngineConfig) -> None:
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, got {type(config).__name__}")
        self.config = config
        self._handle = ModelHandle(self)

    def _check_backend_and_module(self, module: object) -> None:
        """A backend's constructor checks: ``config.backend`` names this backend, ``module`` is an
        ``nn.Module``."""
        if self.config.backend != self.backend:
            raise ValueError(
                f"{type(self).__name__} needs EngineConfig.backend={self.backend!r}, "
                f"got {self.config.backend!r}"
            )
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")

    # --- identity -------------------------------------------------------------------------
    @property
    def model(self) -> ModelHandle:
        """The handle to pass to ``loss_fn(model, batch)``."""
        return self._handle

    @property
    @abstractmethod
    def module(self) -> nn.Module:
        """The user's module (under ZeRO-3 its parameters are partitioned between calls)."""

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def rank(self) -> int: ...

    @property
    @abstractmethod
    def world_size(self) -> int: ...

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (the process that logs and writes shared files)."""
        return self.rank == 0

    @property
    @abstractmethod
    def global_step(self) -> int:
        """Optimizer steps applied so far."""

    @property
    @abstractmethod
    def lr(self) -> float:
        """Learning rate the next optimizer step will use (first parameter group)."""

    @property
    @abstractmethod
    def is_accumulation_boundary(self) -> bool:
        """Whether the next ``backward`` completes an accumulation window."""

    # --- training ---------------------------------------------------------------------------
    @abstractmethod
    def run_forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``module.<method>(*args, **kwargs)`` as the backend's forward."""

    @abstractmethod
    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate ``grad(loss / grad_accum)`` into the gradients."""

    @abstractmethod
    def step(self) -> StepOutcome:
        """Call after every ``backward``; applies the update on the accumulation boundary."""

    def train_step(self, loss: torch.Tensor) -> StepOutcome:
        """``backward(loss)`` followed by ``step()``."""
        self.backward(loss)
        return self.step()

    # --- state --------------------------------------------------------------------------------
    @abstractmethod
    def save_state(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write a resumable training state (collective: every rank must call it)."""

    def _write_state(
        self,
        directory: str | Path,
        extra: Mapping[str, Any] | None,
        write_backend_files: Callable[[Path], None],
    ) -> Path:
        """The staged layout shared by every backend's :meth:`save_state` (collective).

        Stages ``directory`` (:func:`state.begin_staging`), lets the backend write its weights /
        optimizer files into the staging folder, writes ``engine.json`` from the main rank and
        each rank's RNG state, then commits the staging folder atomically.
        """
        final = Path(directory)
        staging = st.begin_staging(final, is_main=self.is_main, barrier=self.barrier)
        write_backend_files(staging)
        if self.is_main:
            meta = st.EngineMeta(
                backend=self.backend,
                global_step=self.global_step,
                world_size=self.world_size,
                config=self.config.to_dict(),
            )
            st.write_engine_meta(staging, meta, extra)
        st.save_rng(staging, self.rank)
        return st.commit_staging(staging, final, is_main=self.is_main, barrier=self.barrier)

    @abstractmethod
    def load_state(self, directory: str | Path) -> dict[str, Any]:
        """Restore a state written by :meth:`save_state`; returns its ``extra`` dict."""

    @abstractmethod
    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Full, unpartitioned fp32 weights of the module on CPU (collective under ZeRO-3)."""

    def gathered_parameters(self) -> contextlib.AbstractContextManager[None]:
        """Context in which ``module`` holds whole parameters on every rank (collective).

        A no-op except under ZeRO-3, where it gathers every partition
        (``deepspeed.zero.GatheredParameters``), e.g. to call ``module.save_pretrained`` on the
        main rank or to evaluate the module directly. Read-only: changes are discarded on exit.
        Under bf16/fp16 the module holds the half-precision working copy; the fp32 master
        weights come from :meth:`consolidated_state_dict`.
        """
        return contextlib.nullcontext()

    def save_consolidated(self, path: str | Path) -> Path | None:
        """Write :meth:`consolidated_state_dict` to one safetensors file from the main process.

        Loadable by a single plain-PyTorch process with
        ``module.load_state_dict(safetensors.torch.load_file(path))``. Collective.
        """
        from safetensors.torch import save_file

        state = self.consolidated_state_dict()
        path = Path(path)
        if self.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".partial")
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
            tmp.replace(path)
        self.barrier()
        return path if self.is_main else None

    # --- collectives ------------------------------------------------------------------------
    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of ``tensor`` over all ranks (a copy; the input is untouched)."""
        out = tensor.detach().clone()
        if self.world_size > 1:
            import torch.distributed as dist

            on_device = out.to(self.device)
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            out = on_device.to(tensor.device) / self.world_size
        return out

    def barrier(self) -> None:
        """Wait for every rank (no-op for one process)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def to_device(self, batch: Any) -> Any:
        """``batch`` with every tensor moved to :attr:`device`."""
        return move_to_device(batch, self.device)

    def trainable_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The module's parameters that receive gradients."""
        return ((n, p) for n, p in self.module.named_parameters() if p.requires_grad)


LossFn = Callable[[ModelHandle, Any], tuple[torch.Tensor, Mapping[str, Any]]]

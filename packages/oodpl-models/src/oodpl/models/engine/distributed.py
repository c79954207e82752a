"""Process-group setup from launcher environment variables, and deterministic data sharding.

Launchers (``torchrun`` / ``python -m torch.distributed.run``, the ``deepspeed`` launcher) set
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process;
a plain ``python script.py`` sets none of them and runs as rank 0 of 1.

Data order. Epoch ``e`` visits the dataset in the order ``perm_e = randperm(n)`` drawn from a
generator seeded with ``seed + e`` (the ``DistributedSampler`` convention), cut into global batches
of ``G = micro_batch_size * grad_accum * world_size`` consecutive indices (an incomplete last batch
is dropped, so every optimizer step sees exactly ``G`` examples). Within global batch ``g`` the
micro-batch of rank ``r`` at accumulation step ``j`` is the slice

    g[(j * world_size + r) * b : (j * world_size + r + 1) * b],   b = micro_batch_size.

The permutation and the global batches do not depend on ``world_size``, so the global batch of a
2-process run equals the batch of a 1-process run with twice the accumulation, and micro-batch
``j * world_size + r`` of the 1-process run is exactly micro-batch ``j`` of rank ``r``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedEnv:
    """Rank layout read from the launcher's environment variables."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on global rank 0."""
        return self.rank == 0


def read_distributed_env(environ: dict[str, str] | None = None) -> DistributedEnv:
    """Parse ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.

    Missing variables default to a single process (rank 0 of 1). A malformed or inconsistent value
    raises ``ValueError`` naming the variable.
    """
    env = os.environ if environ is None else environ

    def as_int(name: str, default: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(
                f"environment variable {name} must be an integer, got {raw!r}"
            ) from None

    world_size = as_int("WORLD_SIZE", 1)
    rank = as_int("RANK", 0)
    local_rank = as_int("LOCAL_RANK", rank)
    if world_size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"environment variable RANK={rank} is outside [0, WORLD_SIZE={world_size})"
        )
    if local_rank < 0:
        raise ValueError(f"environment variable LOCAL_RANK must be >= 0, got {local_rank}")
    return DistributedEnv(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1") or "127.0.0.1",
        master_port=as_int("MASTER_PORT", 29500),
    )


def default_backend() -> str:
    """``"nccl"`` when CUDA is available, else ``"gloo"`` (the CPU backend)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_process_group(backend: str | None = None) -> DistributedEnv:
    """Join the process group described by the environment (no-op for a single process).

    Idempotent: when ``torch.distributed`` is already initialised (e.g. by
    ``deepspeed.init_distributed``) the existing group is used and its rank/size returned.
    """
    env = read_distributed_env()
    if dist.is_available() and dist.is_initialized():
        return DistributedEnv(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=env.local_rank,
            master_addr=env.master_addr,
            master_port=env.master_port,
        )
    if env.is_distributed:
        dist.init_process_group(
            backend=backend or default_backend(), rank=env.rank, world_size=env.world_size
        )
    return env


def ensure_single_process_env() -> None:
    """Fill in ``RANK=0``, ``WORLD_SIZE=1``, ``MASTER_ADDR``/``MASTER_PORT`` when absent.

    DeepSpeed always builds a process group, even for one process; without these variables it
    tries MPI discovery. Only unset variables are written.
    """
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def epoch_permutation(n_items: int, *, seed: int, epoch: int) -> list[int]:
    """The visiting order of epoch ``epoch``: ``randperm(n_items)`` seeded with ``seed + epoch``."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    generator = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(n_items, generator=generator).tolist()


def global_batches(
    n_items: int, *, global_batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """Epoch ``epoch`` cut into global batches of ``global_batch_size`` indices.

    The last, incomplete batch is dropped.

    Raises ``ValueError`` when the dataset is smaller than one global batch.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if n_items < global_batch_size:
        raise ValueError(
            f"the dataset has {n_items} items, fewer than one global batch of "
            f"{global_batch_size} (micro_batch_size * grad_accum * world_size)"
        )
    order = epoch_permutation(n_items, seed=seed, epoch=epoch)
    n_batches = n_items // global_batch_size
    return [order[i * global_batch_size : (i + 1) * global_batch_size] for i in range(n_batches)]


def rank_micro_batches(
    global_batch: Sequence[int], *, rank: int, world_size: int, micro_batch_size: int
) -> list[list[int]]:
    """The micro-batches of ``rank`` within one global batch, in accumulation order.

    Micro-batch ``j`` of rank ``r`` is ``global_batch[(j*W + r)*b : (j*W + r + 1)*b]``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    span = world_size * micro_batch_size
    if micro_batch_size < 1 or len(global_batch) % span:
        raise ValueError(
            f"global batch of {len(global_batch)} items is not a multiple of "
            f"world_size * micro_batch_size = {span}"
        )
    n_accum = len(global_batch) // span
    return [
        list(
            global_batch[
                (j * world_size + rank) * micro_batch_size : (j * world_size + rank + 1)
                * micro_batch_size
            ]
        )
        for j in range(n_accum)
    ]

"""EngineConfig validation, the LR schedule, the DeepSpeed config dict and data sharding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.models.engine import EngineConfig, lr_multiplier
from oodpl.models.engine.deepspeed_engine import deepspeed_config
from oodpl.models.engine.distributed import (
    epoch_permutation,
    global_batches,
    rank_micro_batches,
    read_distributed_env,
)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backend": "jax"}, "backend"),
        ({"precision": "fp8"}, "precision"),
        ({"scheduler": "step"}, "scheduler"),
        ({"zero_stage": 4, "backend": "deepspeed"}, "zero_stage"),
        ({"zero_stage": 2}, "zero_stage"),  # torch backend
        ({"grad_accum": 0}, "grad_accum"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"warmup_steps": 11, "max_steps": 10}, "warmup_steps"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"offload_optimizer": True}, "offload_optimizer"),  # torch backend
        ({"backend": "deepspeed", "offload_optimizer": True}, "offload_optimizer"),  # stage 0
        ({"backend": "deepspeed", "zero_stage": 2, "offload_params": True}, "offload_params"),
        ({"deepspeed_overrides": {"a": 1}}, "deepspeed_overrides"),  # torch backend
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EngineConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"grad_accum": 1.5}, "grad_accum"), ({"offload_params": 1}, "offload_params")],
)
def test_wrong_type_raises_type_error(kwargs: dict, field: str) -> None:
    with pytest.raises(TypeError, match=field):
        EngineConfig(**kwargs)


def test_config_round_trips_through_dict() -> None:
    config = EngineConfig(
        backend="deepspeed",
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
        precision="bf16",
        betas=(0.8, 0.95),
        deepspeed_overrides={"zero_optimization": {"stage3_param_persistence_threshold": 0}},
    )
    assert EngineConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown field"):
        EngineConfig.from_dict({**config.to_dict(), "learning_rate": 1.0})


@pytest.mark.parametrize("kind", ["constant", "linear", "cosine"])
@pytest.mark.parametrize(("warmup", "total"), [(0, 10), (3, 10), (4, 4)])
def test_lr_schedule_matches_transformers(kind: str, warmup: int, total: int) -> None:
    """Independent reference: transformers' get_*_schedule_with_warmup on a dummy optimizer."""
    import transformers

    factory = {
        "constant": lambda o: transformers.get_constant_schedule_with_warmup(o, warmup),
        "linear": lambda o: transformers.get_linear_schedule_with_warmup(o, warmup, total),
        "cosine": lambda o: transformers.get_cosine_schedule_with_warmup(o, warmup, total),
    }[kind]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = factory(opt)
    for step in range(total + 2):
        expected = opt.param_groups[0]["lr"]
        got = lr_multiplier(step, scheduler=kind, warmup_steps=warmup, max_steps=total)
        assert got == pytest.approx(expected, abs=1e-12), (kind, step)
        opt.step()
        reference.step()


def test_lr_schedule_closed_forms() -> None:
    cfg = EngineConfig(lr=1.0, warmup_steps=2, max_steps=6, scheduler="cosine")
    assert [cfg.lr_multiplier(t) for t in (0, 1)] == [0.0, 0.5]
    assert cfg.lr_multiplier(2) == 1.0
    assert cfg.lr_multiplier(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cfg.lr_multiplier(6) == pytest.approx(0.0, abs=1e-12)


def test_deepspeed_config_dict() -> None:
    cfg = EngineConfig(
        backend="deepspeed",
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
        precision="bf16",
        grad_accum=3,
        micro_batch_size=5,
        max_grad_norm=0.5,
        deepspeed_overrides={"zero_optimization": {"stage3_param_persistence_threshold": 0}},
    )
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 30 == cfg.global_batch_size(2)
    assert ds["train_micro_batch_size_per_gpu"] == 5
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu"},
        "offload_param": {"device": "cpu"},
        "stage3_param_persistence_threshold": 0,
    }
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    no_clip = deepspeed_config(EngineConfig(backend="deepspeed", max_grad_norm=None), 1)
    assert no_clip["gradient_clipping"] == 0.0


def test_distributed_env_parsing() -> None:
    env = read_distributed_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (1, 2, 1, False)
    assert read_distributed_env({}).world_size == 1
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        read_distributed_env({"WORLD_SIZE": "two"})
    with pytest.raises(ValueError, match="RANK=2"):
        read_distributed_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_permutation_is_seeded_by_seed_and_epoch() -> None:
    a = epoch_permutation(50, seed=3, epoch=0)
    assert a == epoch_permutation(50, seed=3, epoch=0)
    assert sorted(a) == list(range(50))
    assert a != epoch_permutation(50, seed=3, epoch=1)
    g = torch.Generator().manual_seed(3)  # the DistributedSampler convention: seed + epoch
    assert a == torch.randperm(50, generator=g).tolist()


@settings(max_examples=60, deadline=None)
@given(
    n_items=st.integers(1, 200),
    micro=st.integers(1, 5),
    accum=st.integers(1, 4),
    world=st.integers(1, 4),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 5),
)
def test_sharding_reassembles_the_single_process_batches(
    n_items: int, micro: int, accum: int, world: int, seed: int, epoch: int
) -> None:
    """Union over ranks of every global batch == the 1-process batch with accum * world steps,
    micro-batch for micro-batch; batches are disjoint and drop only the incomplete tail."""
    gbs = micro * accum * world
    if n_items < gbs:
        with pytest.raises(ValueError, match="global batch"):
            global_batches(n_items, global_batch_size=gbs, seed=seed, epoch=epoch)
        return
    multi = global_batches(n_items, global_batch_size=gbs, seed=seed, epoch=epoch)
    assert len(multi) == n_items // gbs
    seen: list[int] = []
    for batch in multi:
        single = rank_micro_batches(batch, rank=0, world_size=1, micro_batch_size=micro)
        per_rank = [
            rank_micro_batches(batch, rank=r, world_size=world, micro_batch_size=micro)
            for r in range(world)
        ]
        assert all(len(m) == accum for m in per_rank)
        for j in range(accum):
            for r in range(world):
                assert per_rank[r][j] == single[j * world + r]
        seen.extend(batch)
    assert len(seen) == len(set(seen)) == (n_items // gbs) * gbs

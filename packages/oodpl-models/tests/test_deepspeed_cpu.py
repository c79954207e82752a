"""DeepSpeed for real on CPU (gloo): 2-process ZeRO runs against the 1-process torch run.

Every run trains the same tiny reward model (Bradley-Terry loss) from the same initial weights
on the same data order at the same global batch (2 processes x 1 micro-batch x 4 pairs vs
1 process x 2 micro-batches x 4 pairs) and compares the per-step loss curve, the learning rates,
the gradient norms and the final weights. Launcher: ``python -m torch.distributed.run
--nproc_per_node 2`` (env: DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1); the ``deepspeed`` launcher is
exercised in test_deepspeed_reward.py. The first run on a machine JIT-compiles DeepSpeed's shm
comm op (~30 s, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from ds_worker_common import (
    SMOKE_SETTINGS,
    TRAIN_ITEMS,
    TRAIN_SETTINGS,
    PairRewardMLP,
    launch,
    probe_inputs,
    read_json,
    run_short_training,
)

from oodpl.models.engine import EngineConfig

pytestmark = pytest.mark.deepspeed
PARTITION_ALL = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
FP32_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def torch_reference() -> dict:
    """The single-process plain-PyTorch run at the workers' global batch (accumulation 2)."""
    config = EngineConfig(backend="torch", grad_accum=2, **TRAIN_SETTINGS)
    return run_short_training("mlp", config, n_items=TRAIN_ITEMS, keep_weights=True)


def _history(out: Path) -> list[dict]:
    return read_json(out / "history.json")


def _assert_matches_reference(out: Path, reference: dict) -> None:
    history = _history(out)
    losses = [r["loss"] for r in history]
    print(f"\n{out.name}: 2-process losses {[round(x, 6) for x in losses]}")
    print(f"{out.name}: 1-process torch   {[round(x, 6) for x in reference['losses']]}")
    assert losses == pytest.approx(reference["losses"], abs=1e-5)
    assert [r["lr"] for r in history] == pytest.approx(reference["lrs"], abs=1e-12)
    assert [r["grad_norm"] for r in history] == pytest.approx(reference["grad_norms"], rel=1e-4)
    weights = load_file(str(out / "consolidated.safetensors"))
    assert weights.keys() == reference["weights"].keys()
    for key, value in reference["weights"].items():
        torch.testing.assert_close(weights[key], value, **FP32_TOL)


def test_zero3_curve_consolidated_checkpoint_and_resume(
    tmp_path: Path, torch_reference: dict
) -> None:
    out, ckpt = tmp_path / "zero3", tmp_path / "ckpt"
    common = ["--backend", "deepspeed", "--zero-stage", "3", "--partition-all"]
    launch(
        "ds_worker_train.py",
        [*common, "--out", str(out), "--checkpoint-dir", str(ckpt), "--checkpoint-every", "3"],
        nproc=2,
    )
    _assert_matches_reference(out, torch_reference)

    # The consolidated checkpoint loads into a plain module in this single process, and gives
    # the rewards the 2-process ZeRO-3 engine computed.
    module = PairRewardMLP()
    module.load_state_dict(load_file(str(out / "consolidated.safetensors")), strict=True)
    module.eval()
    with torch.no_grad():
        rewards = module(probe_inputs("mlp"))
    engine_rewards = torch.tensor(read_json(out / "info.json")["probe"])
    torch.testing.assert_close(rewards, engine_rewards, **FP32_TOL)

    # DeepSpeed's own zero_to_fp32 path, offline, in one process: the same weights.
    from oodpl.models.engine.deepspeed_engine import consolidate_deepspeed_state

    offline = consolidate_deepspeed_state(ckpt / "step-00000006", tmp_path / "offline.safetensors")
    for key, value in load_file(str(out / "consolidated.safetensors")).items():
        torch.testing.assert_close(offline[key], value, rtol=0, atol=0)

    # Resume from the step-3 state in fresh processes: same parameters at step 6.
    resumed = tmp_path / "resumed"
    launch(
        "ds_worker_train.py",
        [*common, "--out", str(resumed), "--resume-from", str(ckpt / "step-00000003")],
        nproc=2,
    )
    tail = _history(out)[3:]
    assert [r["step"] for r in _history(resumed)] == [r["step"] for r in tail] == [4, 5, 6]
    assert [r["loss"] for r in _history(resumed)] == pytest.approx([r["loss"] for r in tail])
    expected = load_file(str(out / "consolidated.safetensors"))
    for key, value in load_file(str(resumed / "consolidated.safetensors")).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-7)


def test_stages_offload_precisions_and_checkpointing(tmp_path: Path) -> None:
    """ZeRO-0/1, offload (optimizer; optimizer + params), bf16/fp16, and a tiny GPT-NeoX under
    ZeRO-3 with activation checkpointing: one 2-process launch, each run against torch."""
    fp16_ok = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    configs = [
        {"name": "zero0", "zero_stage": 0},
        {"name": "zero1", "zero_stage": 1},
        {"name": "zero2_offload_opt", "zero_stage": 2, "offload_optimizer": True},
        {
            "name": "zero3_offload_all",
            "zero_stage": 3,
            "offload_optimizer": True,
            "offload_params": True,
            "deepspeed_overrides": PARTITION_ALL,
        },
        {"name": "zero0_bf16", "zero_stage": 0, "precision": "bf16"},
        {"name": "zero2_bf16", "zero_stage": 2, "precision": "bf16"},
        {"name": "zero2_fp16", "zero_stage": 2, "precision": "fp16"},
        {
            "name": "zero3_neox_ckpt",
            "model": "neox",
            "zero_stage": 3,
            "grad_checkpointing": True,
            "lr": 0.005,
            "deepspeed_overrides": PARTITION_ALL,
        },
    ]
    out = tmp_path / "matrix.json"
    launch("ds_worker_matrix.py", ["--configs", json.dumps(configs), "--out", str(out)], nproc=2)
    results = read_json(out)
    references = {
        kind: run_short_training(kind, EngineConfig(grad_accum=2, **{**SMOKE_SETTINGS, "lr": lr}))
        for kind, lr in (("mlp", SMOKE_SETTINGS["lr"]), ("neox", 0.005))
    }
    for spec in configs:
        name, got = spec["name"], results[spec["name"]]
        if name == "zero2_fp16" and not fp16_ok:
            assert "fp16" in got["error"], got
            continue
        assert "error" not in got, (name, got)
        ref = references[spec.get("model", "mlp")]
        print(f"\n{name}: {[round(x, 6) for x in got['losses']]} ({got['seconds']:.2f} s)")
        assert got["world_size"] == 2
        assert got["lrs"] == pytest.approx(ref["lrs"], abs=1e-12)
        precision = {"zero0_bf16": "bf16", "zero2_bf16": "bf16", "zero2_fp16": "fp16"}.get(name)
        if precision is None:  # fp32: same curve and same model, to rounding
            assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5), name
            assert got["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-4), name
            assert got["probe"] == pytest.approx(ref["probe"], abs=1e-4), name
        else:  # half-precision weights / activations: the same curve, to bf16/fp16 resolution
            tol = 3e-2 if precision == "bf16" else 5e-3
            assert got["losses"] == pytest.approx(ref["losses"], abs=tol), name
            assert got["probe"] == pytest.approx(ref["probe"], abs=10 * tol), name
    print(f"\nneox torch reference: {[round(x, 6) for x in references['neox']['losses']]}")


def test_single_process_deepspeed_without_a_launcher(tmp_path: Path, torch_reference: dict) -> None:
    """Plain ``python script.py`` with backend='deepspeed': world size 1, accumulation 2."""
    out = tmp_path / "single"
    launch(
        "ds_worker_train.py",
        ["--backend", "deepspeed", "--zero-stage", "1", "--grad-accum", "2", "--out", str(out)],
        launcher="python",
    )
    assert read_json(out / "info.json")["world_size"] == 1
    _assert_matches_reference(out, torch_reference)

"""The torch backend on 2 processes (DistributedDataParallel over gloo) == 1 process.

Two ranks with 2 accumulated micro-batches each (DDP ``no_sync`` on the first) against one
process with 4 accumulated micro-batches: the same global batch of 16 pairs per step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from ds_worker_common import TRAIN_ITEMS, TRAIN_SETTINGS, launch, read_json, run_short_training

from oodpl.models.engine import EngineConfig


def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    launch(
        "ds_worker_train.py",
        ["--backend", "torch", "--grad-accum", "2", "--out", str(out)],
        nproc=2,
    )
    reference = run_short_training(
        "mlp", EngineConfig(grad_accum=4, **TRAIN_SETTINGS), n_items=TRAIN_ITEMS, keep_weights=True
    )
    history = read_json(out / "history.json")
    assert read_json(out / "info.json")["world_size"] == 2
    assert [r["loss"] for r in history] == pytest.approx(reference["losses"], abs=1e-6)
    assert [r["grad_norm"] for r in history] == pytest.approx(reference["grad_norms"], rel=1e-5)
    weights = load_file(str(out / "consolidated.safetensors"))
    for key, value in reference["weights"].items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6)

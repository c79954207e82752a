"""The generic training loop: logging, checkpoints, in-process resume, input errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from ds_worker_common import bt_loss_fn, build_model, make_pairs

from oodpl.models.engine import EngineConfig, EngineStateError, build_engine
from oodpl.models.engine.loop import JsonlLogger, resolve_checkpoint, train

CFG = EngineConfig(
    lr=0.05, warmup_steps=1, max_steps=7, scheduler="linear", micro_batch_size=4, grad_accum=2
)


def _run(tmp_path: Path, **kwargs):
    engine = build_engine(build_model(seed=0, dropout=0.2), CFG)
    return engine, train(engine, make_pairs(n=40), bt_loss_fn, **kwargs)


def test_logs_one_record_per_step(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    _, result = _run(tmp_path, on_log=JsonlLogger(log))
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == result.history
    assert [r["step"] for r in lines] == list(range(1, 8))
    assert [r["samples"] for r in lines] == [8 * s for s in range(1, 8)]
    # 40 items, global batch 8: 5 batches per epoch
    assert [r["epoch"] for r in lines] == [0] * 5 + [1] * 2
    assert set(lines[0]) == {"step", "epoch", "lr", "loss", "grad_norm", "samples", "skipped"} | {
        "accuracy"
    }
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["loss"] > 0 for r in lines)


def test_checkpoints_latest_and_pruning(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    seen: list[int] = []
    _, result = _run(
        tmp_path,
        checkpoint_dir=root,
        checkpoint_every=2,
        keep_last=2,
        on_checkpoint=lambda path, step: seen.append(step),
    )
    assert seen == [2, 4, 6, 7]  # every 2 steps and at the end
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000006", "step-00000007"]
    assert resolve_checkpoint(root) == root / "step-00000007" == result.last_checkpoint
    extra = json.loads((root / "step-00000006" / "extra.json").read_text())
    assert extra["progress"] == {
        "epoch": 1,
        "batch_in_epoch": 1,
        "global_step": 6,
        "samples_seen": 48,
        "n_items": 40,
        "global_batch_size": 8,
        "seed": 0,
    }


def test_resume_in_process_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Resume at step 3 (mid-epoch, with dropout) == uninterrupted, exactly; across an epoch."""
    full_engine, full = _run(tmp_path / "a", checkpoint_dir=tmp_path / "a", checkpoint_every=3)
    engine = build_engine(build_model(seed=77, dropout=0.2), CFG)
    torch.manual_seed(4321)
    resumed = train(
        engine, make_pairs(n=40), bt_loss_fn, resume_from=tmp_path / "a" / "step-00000003"
    )
    assert [r["step"] for r in resumed.history] == [4, 5, 6, 7]
    assert resumed.history == full.history[3:]
    for key, value in full_engine.module.state_dict().items():
        assert torch.equal(engine.module.state_dict()[key], value), key


def test_resume_with_another_data_layout_is_refused(tmp_path: Path) -> None:
    _run(tmp_path, checkpoint_dir=tmp_path / "c", max_steps=2)
    engine = build_engine(build_model(seed=0, dropout=0.2), CFG)
    with pytest.raises(ValueError, match="n_items was 40 and is now 48"):
        train(engine, make_pairs(n=48), bt_loss_fn, resume_from=tmp_path / "c")
    with pytest.raises(EngineStateError, match="neither a training state"):
        train(engine, make_pairs(n=40), bt_loss_fn, resume_from=tmp_path)


def test_bad_loop_inputs() -> None:
    engine = build_engine(build_model(seed=0), CFG)
    with pytest.raises(ValueError, match="fewer than one global batch of 8"):
        train(engine, make_pairs(n=7), bt_loss_fn)
    with pytest.raises(TypeError, match="loss_fn must return"):
        train(engine, make_pairs(n=16), lambda m, b: bt_loss_fn(m, b)[0])
    with pytest.raises(ValueError, match="'lr' is reserved"):
        train(engine, make_pairs(n=16), lambda m, b: (bt_loss_fn(m, b)[0], {"lr": 1.0}))
    with pytest.raises(ValueError, match="max_steps"):
        train(engine, make_pairs(n=16), bt_loss_fn, max_steps=0)

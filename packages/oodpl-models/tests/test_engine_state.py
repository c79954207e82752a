"""Resumable state on disk: exact optimizer / scheduler / RNG round trips, no pickle, errors."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from ds_worker_common import bt_loss_fn, build_model, make_pairs

from oodpl.models.engine import EngineConfig, EngineStateError, build_engine
from oodpl.models.engine import state as st

CFG = EngineConfig(lr=0.05, warmup_steps=2, max_steps=10, scheduler="cosine", micro_batch_size=4)


def _steps(engine, pairs, n: int) -> None:
    for i in range(n):
        batch = torch.utils.data.default_collate(pairs[4 * i : 4 * i + 4])
        engine.train_step(bt_loss_fn(engine.model, batch)[0])


def test_optimizer_state_round_trip_is_exact(tmp_path: Path) -> None:
    engine = build_engine(build_model(seed=0), CFG)
    _steps(engine, make_pairs(n=16), 3)
    st.save_optimizer(tmp_path, engine.optimizer)
    fresh = build_engine(build_model(seed=5), CFG)
    st.load_optimizer(tmp_path, fresh.optimizer)
    a, b = engine.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert isinstance(b["param_groups"][0]["betas"], tuple)
    assert a["state"].keys() == b["state"].keys()
    for pid, entry in a["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, b["state"][pid][name]), (pid, name)


def test_rng_state_round_trip(tmp_path: Path) -> None:
    st.seed_everything(11)
    st.save_rng(tmp_path, rank=0)
    first = (random.random(), np.random.rand(), torch.rand(3), torch.randn(2))
    st.seed_everything(999)
    st.load_rng(tmp_path, rank=0, saved_world_size=1)
    again = (random.random(), np.random.rand(), torch.rand(3), torch.randn(2))
    assert first[:2] == again[:2]
    assert torch.equal(first[2], again[2]) and torch.equal(first[3], again[3])


def test_json_keeps_tuples_and_rejects_non_json(tmp_path: Path) -> None:
    data = {"a": (1, 2.5, (None, True)), "b": [1, (2,)], "c": 0.1 + 0.2}
    st.write_json(tmp_path / "x.json", data)
    assert st.read_json(tmp_path / "x.json") == data
    with pytest.raises(TypeError, match=r"extra\.json"):
        st.write_engine_meta(tmp_path, st.EngineMeta("torch", 0, 1, {}), {"bad": object()})
    (tmp_path / "broken.json").write_text('{"a": 1,\n oops}')
    with pytest.raises(EngineStateError, match=r"broken\.json: invalid JSON at line 2"):
        st.read_json(tmp_path / "broken.json")


def test_save_load_continues_exactly_and_writes_no_pickle(tmp_path: Path) -> None:
    pairs = make_pairs(n=32)
    engine = build_engine(build_model(seed=0, dropout=0.3), CFG)
    _steps(engine, pairs, 3)
    engine.save_state(tmp_path / "s", extra={"note": "hello"})
    _steps(engine, pairs[12:], 3)
    expected = {k: v.clone() for k, v in engine.module.state_dict().items()}

    resumed = build_engine(build_model(seed=42, dropout=0.3), CFG)
    torch.manual_seed(1234)  # disturb the RNG: load_state must restore it (dropout uses it)
    assert resumed.load_state(tmp_path / "s") == {"note": "hello"}
    assert resumed.global_step == 3 and resumed.lr == pytest.approx(
        engine.optimizer.param_groups[0]["initial_lr"] * CFG.lr_multiplier(3)
    )
    _steps(resumed, pairs[12:], 3)
    for key, value in resumed.module.state_dict().items():
        assert torch.equal(value, expected[key]), key
    suffixes = {p.suffix for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert suffixes == {".json", ".safetensors"}


def test_bad_state_directories_raise_naming_the_file(tmp_path: Path) -> None:
    engine = build_engine(build_model(seed=0), CFG)
    with pytest.raises(EngineStateError, match="does not exist"):
        engine.load_state(tmp_path / "missing")
    _steps(engine, make_pairs(n=8), 1)
    engine.save_state(tmp_path / "s")
    (tmp_path / "s" / "scheduler.json").unlink()
    with pytest.raises(EngineStateError, match=r"scheduler\.json"):
        build_engine(build_model(seed=0), CFG).load_state(tmp_path / "s")

    engine.save_state(tmp_path / "s")
    meta = st.read_json(tmp_path / "s" / "engine.json")
    st.write_json(tmp_path / "s" / "engine.json", {**meta, "backend": "deepspeed"})
    with pytest.raises(EngineStateError, match="backend='deepspeed'"):
        build_engine(build_model(seed=0), CFG).load_state(tmp_path / "s")

    engine.save_state(tmp_path / "s")
    partly_frozen = build_model(seed=0)
    partly_frozen.body[0].bias.requires_grad_(False)
    with pytest.raises(EngineStateError, match=r"optimizer\.json: parameter groups"):
        build_engine(partly_frozen, CFG).load_state(tmp_path / "s")


def test_save_inside_an_accumulation_window_is_refused(tmp_path: Path) -> None:
    engine = build_engine(build_model(seed=0), EngineConfig(grad_accum=2, micro_batch_size=4))
    batch = torch.utils.data.default_collate(make_pairs(n=4))
    engine.backward(bt_loss_fn(engine.model, batch)[0])
    with pytest.raises(RuntimeError, match="accumulation window"):
        engine.save_state(tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_commit_replaces_an_existing_state(tmp_path: Path) -> None:
    final = tmp_path / "state"
    for content in ("one", "two"):
        staging = st.begin_staging(final, is_main=True, barrier=lambda: None)
        assert staging.name == "state.partial"
        (staging / "f.txt").write_text(content)
        st.commit_staging(staging, final, is_main=True, barrier=lambda: None)
    assert (final / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]

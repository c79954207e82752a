"""Acceptance 4 on oodpl's RewardModel: DeepSpeed ZeRO-2 and ZeRO-3, 2 processes, CPU + gloo.

The reward trainer (Bradley-Terry) runs on 2 processes (ZeRO-2 with the ``deepspeed`` launcher,
ZeRO-3 with ``torch.distributed.run``, every parameter partitioned) and in this process on the
plain-PyTorch engine with twice the accumulation (equal global batch of 8 pairs). Checked: the
per-step loss curves agree, and the trained model — saved by the 2-process run from inside
``engine.gathered_parameters()`` and as a consolidated safetensors file — loads in this single
process and gives the rewards the 2-process engine computed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent / "workers"))
from ds_worker_common import (
    RM_SETTINGS,
    launch,
    read_json,
    reward_pairs,
    reward_probe_pairs,
)

from oodpl.models.engine import EngineConfig
from oodpl.models.reward_model import RewardModel
from oodpl.models.tokenizer import record_texts, train_bpe_tokenizer
from oodpl.models.trainers.reward import train_reward_model

pytestmark = pytest.mark.deepspeed


def _probe(rm: RewardModel) -> torch.Tensor:
    rm.eval()
    with torch.no_grad():
        chosen, rejected = rm.preference_rewards(rm.preference_collator()(reward_probe_pairs()))
    return torch.cat([chosen, rejected])


@pytest.fixture(scope="module")
def initial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The initial reward model (pythia-tiny, full fine-tuning) every run starts from."""
    tokenizer = train_bpe_tokenizer(
        list(record_texts(reward_pairs())), vocab_size=300, model_max_length=32
    )
    path = tmp_path_factory.mktemp("rm") / "init"
    RewardModel.from_preset("pythia-tiny", tokenizer, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def single_process(initial: Path) -> dict:
    rm = RewardModel.load(initial)
    config = EngineConfig(backend="torch", grad_accum=2, **RM_SETTINGS)
    result = train_reward_model(rm, reward_pairs(), engine=config)
    losses = [r["loss"] for r in result.history]
    return {"losses": losses, "probe": _probe(rm)}


@pytest.mark.parametrize(
    ("stage", "launcher"), [(2, "deepspeed"), (3, "torchrun")], ids=["zero2", "zero3"]
)
def test_two_process_reward_training_matches_single_process(
    tmp_path: Path, initial: Path, single_process: dict, stage: int, launcher: str
) -> None:
    out = tmp_path / f"zero{stage}"
    args = ["--init", str(initial), "--out", str(out), "--zero-stage", str(stage)]
    launch("ds_worker_reward.py", [*args, "--partition-all"], nproc=2, launcher=launcher)
    info = read_json(out / "info.json")
    assert info["world_size"] == 2
    losses = [r["loss"] for r in read_json(out / "history.json")]
    print(f"\nZeRO-{stage} 2-process : {[round(x, 6) for x in losses]}")
    print(f"torch 1-process      : {[round(x, 6) for x in single_process['losses']]}")
    assert losses == pytest.approx(single_process["losses"], abs=1e-5)
    assert losses[-1] < losses[0]

    engine_rewards = torch.tensor(info["probe"])
    saved = RewardModel.load(out / "rm")  # a single process, no DeepSpeed
    torch.testing.assert_close(_probe(saved), engine_rewards, rtol=1e-6, atol=1e-6)
    consolidated = RewardModel.load(initial)
    consolidated.load_state_dict(load_file(str(out / "consolidated.safetensors")), strict=True)
    torch.testing.assert_close(_probe(consolidated), engine_rewards, rtol=1e-6, atol=1e-6)
    # ... and the same reward function as the single-process torch run, to optimizer rounding.
    # (Weights are not compared one by one: the final LayerNorm bias shifts every reward equally,
    # cancels in r_w - r_l, has a zero true gradient, and Adam turns its rounding noise into
    # lr-sized steps that differ between runs without changing any reward difference. So reward
    # differences are compared tightly and the common shift only to lr * steps * |w|.)
    single = single_process["probe"]
    print("probe 2-process - 1-process:", (engine_rewards - single).tolist())
    torch.testing.assert_close(
        engine_rewards - engine_rewards.mean(), single - single.mean(), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(engine_rewards, single, rtol=0, atol=2e-3)

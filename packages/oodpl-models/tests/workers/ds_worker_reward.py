"""Worker: train oodpl's RewardModel with the reward trainer on the DeepSpeed (or torch) engine.

``--init`` is a saved RewardModel (same initial weights and tokenizer on every rank). Writes to
``--out``: ``history.json`` and ``info.json`` (probe rewards computed through the engine) from
the main rank, ``consolidated.safetensors`` (full fp32 weights) and ``rm/`` (the trained model
saved with ``RewardModel.save_pretrained`` inside ``engine.gathered_parameters()``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from ds_worker_common import RM_SETTINGS, reward_pairs, reward_probe_pairs

from oodpl.models.engine import EngineConfig
from oodpl.models.reward_model import RewardModel
from oodpl.models.trainers.reward import train_reward_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--init", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="deepspeed")
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--partition-all", action="store_true")
    p.add_argument("--local_rank", type=int, default=-1)  # set by the deepspeed launcher
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = None
    if args.partition_all:
        overrides = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    config = EngineConfig(
        backend=args.backend,
        zero_stage=args.zero_stage if args.backend == "deepspeed" else 0,
        grad_accum=args.grad_accum,
        deepspeed_overrides=overrides,
        **RM_SETTINGS,
    )
    rm = RewardModel.load(args.init)
    result = train_reward_model(rm, reward_pairs(), engine=config)
    engine = result.engine
    assert engine is not None
    engine.save_consolidated(out / "consolidated.safetensors")
    rm.eval()
    batch = engine.to_device(rm.preference_collator()(reward_probe_pairs()))
    with torch.no_grad():
        chosen, rejected = engine.model.preference_rewards(batch)
    with engine.gathered_parameters():
        if engine.is_main:
            rm.save_pretrained(out / "rm")
    if engine.is_main:
        info = {
            "world_size": engine.world_size,
            "probe": torch.cat([chosen, rejected]).float().cpu().tolist(),
        }
        (out / "history.json").write_text(json.dumps(result.history))
        (out / "info.json").write_text(json.dumps(info))
    engine.barrier()


if __name__ == "__main__":
    main()

"""Worker: train the tiny reward model with the engine loop; run by the tests' launcher.

Writes to ``--out``: ``history.json`` (per-step records, main rank), ``consolidated.safetensors``
(full fp32 weights), ``probe.json`` (rewards of fixed probe inputs, computed through the engine).
``--kill-after-step N`` sends SIGKILL to this process right after the step-N state is written.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
from ds_worker_common import (
    TRAIN_ITEMS,
    TRAIN_SETTINGS,
    bt_loss_fn,
    build_model,
    make_pairs,
    probe_inputs,
)

from oodpl.models.engine import EngineConfig, build_engine
from oodpl.models.engine.loop import JsonlLogger, train


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", default="torch")
    p.add_argument("--model", default="mlp")
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--offload-optimizer", action="store_true")
    p.add_argument("--offload-params", action="store_true")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=TRAIN_SETTINGS["micro_batch_size"])
    p.add_argument("--max-steps", type=int, default=TRAIN_SETTINGS["max_steps"])
    p.add_argument("--lr", type=float, default=TRAIN_SETTINGS["lr"])
    p.add_argument("--warmup", type=int, default=TRAIN_SETTINGS["warmup_steps"])
    p.add_argument("--scheduler", default=TRAIN_SETTINGS["scheduler"])
    p.add_argument("--max-grad-norm", type=float, default=TRAIN_SETTINGS["max_grad_norm"])
    p.add_argument("--weight-decay", type=float, default=TRAIN_SETTINGS["weight_decay"])
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--n-items", type=int, default=TRAIN_ITEMS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--partition-all", action="store_true", help="ZeRO-3: partition every param")
    p.add_argument("--checkpoint-dir")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume-from")
    p.add_argument("--kill-after-step", type=int, default=-1)
    p.add_argument("--out", required=True)
    p.add_argument("--local_rank", type=int, default=-1)  # set by the deepspeed launcher
    return p.parse_args()


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = None
    if args.partition_all:
        overrides = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}
    config = EngineConfig(
        backend=args.backend,
        zero_stage=args.zero_stage,
        offload_optimizer=args.offload_optimizer,
        offload_params=args.offload_params,
        precision=args.precision,
        grad_accum=args.grad_accum,
        micro_batch_size=args.micro_batch,
        max_steps=args.max_steps,
        lr=args.lr,
        warmup_steps=args.warmup,
        scheduler=args.scheduler,
        max_grad_norm=args.max_grad_norm,
        weight_decay=args.weight_decay,
        seed=args.seed,
        deepspeed_overrides=overrides,
    )
    model = build_model(args.model, seed=args.seed, dropout=args.dropout)
    engine = build_engine(model, config)
    dataset = make_pairs(args.model, args.n_items)

    def on_checkpoint(path: Path, step: int) -> None:
        if step == args.kill_after_step:
            os.kill(os.getpid(), signal.SIGKILL)

    result = train(
        engine,
        dataset,
        bt_loss_fn,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        resume_from=args.resume_from,
        on_log=JsonlLogger(out / "metrics.jsonl"),
        on_checkpoint=on_checkpoint,
    )
    engine.save_consolidated(out / "consolidated.safetensors")
    engine.module.eval()
    with torch.no_grad():
        probe = engine.model(probe_inputs(args.model).to(engine.device)).float().cpu()
    if engine.is_main:
        info = {
            "world_size": engine.world_size,
            "global_step": result.global_step,
            "final_lr": engine.lr,
            "probe": probe.tolist(),
        }
        (out / "history.json").write_text(json.dumps(result.history))
        (out / "info.json").write_text(json.dumps(info))
    engine.barrier()


if __name__ == "__main__":
    main()

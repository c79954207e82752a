"""Worker: several short DeepSpeed runs in one launch (ZeRO stages, offload, bf16, ckpt).

``--configs`` is a JSON list of ``{"name", "model", **EngineConfig fields}``; the results (per-step
losses, learning rates, probe rewards) go to ``--out`` as JSON from the main rank.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch.distributed as dist
from ds_worker_common import SMOKE_SETTINGS, run_short_training

from oodpl.models.engine import EngineConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()
    results = {}
    for spec in json.loads(args.configs):
        spec = dict(spec)
        name, model_kind = spec.pop("name"), spec.pop("model", "mlp")
        config = EngineConfig(backend="deepspeed", **{**SMOKE_SETTINGS, **spec})
        start = time.perf_counter()
        try:
            results[name] = run_short_training(model_kind, config)
        except ValueError as err:  # e.g. fp16 on a CPU without fp16 kernels: a clear refusal
            results[name] = {"error": str(err)}
        results[name]["seconds"] = time.perf_counter() - start
        gc.collect()
    if dist.get_rank() == 0:
        Path(args.out).write_text(json.dumps(results, indent=1))
    dist.barrier()


if __name__ == "__main__":
    main()

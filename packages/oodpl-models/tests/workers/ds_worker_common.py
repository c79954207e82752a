"""Shared pieces of the engine tests and their worker scripts (not collected by pytest).

A tiny reward model on synthetic preference pairs: items are ``{"chosen": x_w, "rejected": x_l}``
feature vectors, labelled by a hidden linear reward ``r*(x) = w*.x`` with label noise; the model
is an MLP ``r(x)`` trained with the Bradley-Terry loss ``-mean log sigmoid(r(x_w) - r(x_l))``.
Also: the launcher helper the tests use to start 2-process runs (torchrun or deepspeed).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WORKERS_DIR = Path(__file__).resolve().parent
REPO_ROOT = WORKERS_DIR.parents[3]
PYTHON = sys.executable
FEATURE_DIM = 6


class PairRewardMLP(nn.Module):
    """``r(x) = w2 . tanh(W1 x + b1)`` with optional dropout; a stand-in reward model.

    The head has no bias: a bias cancels in ``r(x_w) - r(x_l)``, so its gradient is zero up to
    rounding, and Adam would turn that rounding noise into full-size updates.
    """

    def __init__(self, dim: int = FEATURE_DIM, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(features)).squeeze(-1)

    def rewards(self, features: torch.Tensor) -> torch.Tensor:
        return self(features)

    def preference_rewards(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Chosen and rejected rewards from ONE forward over the concatenated pair batch."""
        both = torch.cat([batch["chosen"], batch["rejected"]], dim=0)
        rewards = self(both)
        n = batch["chosen"].shape[0]
        return rewards[:n], rewards[n:]


class TinyNeoXReward(nn.Module):
    """A 2-layer GPT-NeoX backbone (random weights) with a scalar head on the last token.

    Items hold ``chosen``/``rejected`` token ids of equal length (no padding), so the last
    position is the last token.
    """

    def __init__(self, vocab: int = 64, hidden: int = 32) -> None:
        super().__init__()
        from transformers import GPTNeoXConfig, GPTNeoXModel

        config = GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            max_position_embeddings=32,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            use_cache=False,
        )
        self.backbone = GPTNeoXModel(config)
        self.head = nn.Linear(hidden, 1, bias=False)  # a bias cancels in BT (see PairRewardMLP)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids).last_hidden_state
        return self.head(hidden[:, -1]).squeeze(-1)

    def preference_rewards(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        both = torch.cat([batch["chosen"], batch["rejected"]], dim=0)
        rewards = self(both)
        n = batch["chosen"].shape[0]
        return rewards[:n], rewards[n:]


def build_model(kind: str = "mlp", *, seed: int = 0, dropout: float = 0.0) -> nn.Module:
    """Model ``kind`` ("mlp" or "neox") with weights drawn from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    if kind == "mlp":
        return PairRewardMLP(dropout=dropout)
    if kind == "neox":
        return TinyNeoXReward()
    raise ValueError(f"unknown model kind {kind!r}")


def make_pairs(kind: str = "mlp", n: int = 64, *, seed: int = 123) -> list[dict[str, torch.Tensor]]:
    """``n`` synthetic preference pairs for model ``kind``, labelled by a hidden reward."""
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        w = torch.randn(FEATURE_DIM, generator=g)
        a, b = torch.randn(n, FEATURE_DIM, generator=g), torch.randn(n, FEATURE_DIM, generator=g)
        score = (a - b) @ w + 0.3 * torch.randn(n, generator=g)
    else:
        a = torch.randint(0, 64, (n, 8), generator=g)
        b = torch.randint(0, 64, (n, 8), generator=g)
        score = (
            (a % 7 == 0).sum(1).float()
            - (b % 7 == 0).sum(1).float()
            + 0.1 * torch.randn(n, generator=g)
        )
    out = []
    for i in range(n):
        chosen, rejected = (a[i], b[i]) if score[i] >= 0 else (b[i], a[i])
        out.append({"chosen": chosen, "rejected": rejected})
    return out


def probe_inputs(kind: str = "mlp") -> torch.Tensor:
    """Eight fixed inputs whose rewards are compared across processes and backends."""
    return torch.stack([p["chosen"] for p in make_pairs(kind, 8, seed=999)])


def bt_loss_fn(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Bradley-Terry loss ``-mean log sigmoid(r_w - r_l)`` and pairwise accuracy."""
    chosen, rejected = model.preference_rewards(batch)
    margin = (chosen - rejected).float()
    loss = -F.logsigmoid(margin).mean()
    return loss, {"accuracy": (margin > 0).float().mean()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_env() -> dict[str, str]:
    """Environment for worker processes: CPU accelerator, 1 thread, offline, src on the path."""
    env = dict(os.environ)
    src = [str(REPO_ROOT / "packages" / p / "src") for p in ("oodpl-core", "oodpl-models")]
    env["PYTHONPATH"] = os.pathsep.join([*src, str(WORKERS_DIR), env.get("PYTHONPATH", "")])
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def launch(
    script: str,
    args: list[str],
    *,
    nproc: int = 1,
    launcher: str = "torchrun",
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``workers/<script>`` on ``nproc`` processes with ``torchrun`` or ``deepspeed``.

    ``nproc=1`` with ``launcher="python"`` runs it as a plain single process.
    """
    path = str(WORKERS_DIR / script)
    port = str(free_port())
    if launcher == "python":
        cmd = [PYTHON, path, *args]
    elif launcher == "torchrun":
        cmd = [
            PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", port, path, *args,
        ]  # fmt: skip
    elif launcher == "deepspeed":
        cmd = [
            str(Path(PYTHON).parent / "deepspeed"), "--num_gpus", str(nproc), "--no_local_rank",
            "--master_addr", "127.0.0.1", "--master_port", port, path, *args,
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    proc = subprocess.run(
        cmd, env=worker_env(), capture_output=True, text=True, timeout=timeout, cwd=WORKERS_DIR
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}\n--- stdout ---\n"
            f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


# Defaults of ds_worker_train.py (6 steps, warm-up then linear decay, clipping, weight decay).
TRAIN_SETTINGS: dict[str, Any] = {
    "micro_batch_size": 4,
    "max_steps": 6,
    "lr": 0.05,
    "warmup_steps": 2,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "weight_decay": 0.01,
}
TRAIN_ITEMS = 48

# Settings of the short runs of ds_worker_matrix.py.
SMOKE_SETTINGS: dict[str, Any] = {
    "micro_batch_size": 4,
    "max_steps": 4,
    "lr": 0.05,
    "warmup_steps": 1,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "weight_decay": 0.01,
}


def run_short_training(
    model_kind: str, config: Any, *, n_items: int = 48, seed: int = 0, keep_weights: bool = False
) -> dict[str, Any]:
    """Train ``model_kind`` with ``config`` through the loop; per-step losses and probe rewards.

    Collective for multi-process engines (every rank must call it).
    """
    from oodpl.models.engine import build_engine
    from oodpl.models.engine.loop import train

    model = build_model(model_kind, seed=seed)
    engine = build_engine(model, config)
    result = train(engine, make_pairs(model_kind, n_items), bt_loss_fn)
    weights = engine.consolidated_state_dict()
    engine.module.eval()
    with torch.no_grad():
        probe = engine.model(probe_inputs(model_kind).to(engine.device)).float().cpu()
    out: dict[str, Any] = {"weights": weights} if keep_weights else {}
    return out | {
        "losses": [r["loss"] for r in result.history],
        "lrs": [r["lr"] for r in result.history],
        "grad_norms": [r["grad_norm"] for r in result.history],
        "probe": probe.tolist(),
        "weight_sums": {k: float(v.double().sum()) for k, v in weights.items()},
        "world_size": engine.world_size,
    }


# --- the real reward model (oodpl.models.RewardModel) for the DeepSpeed acceptance runs -------
RM_SETTINGS: dict[str, Any] = {
    "micro_batch_size": 4,
    "max_steps": 5,
    "lr": 1e-3,
    "warmup_steps": 1,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "weight_decay": 0.01,
}


def reward_pairs() -> list[Any]:
    """24 fixed preference pairs (positive vs negative reviews) for RewardModel training."""
    from oodpl.core.records import Preference

    items = ["book", "film", "kettle", "album", "lamp", "novel", "chair", "radio"]
    good, bad = ["great", "lovely", "sturdy"], ["awful", "boring", "broken"]
    return [
        Preference(f"about the {item}:", f" the {item} is {g}", f" the {item} is {b}", "toy")
        for item in items
        for g, b in zip(good, bad, strict=True)
    ]


def reward_probe_pairs() -> list[Any]:
    from oodpl.core.records import Preference

    return [
        Preference("about the desk:", " the desk is great", " the desk is awful", "toy"),
        Preference("about the song:", " the song is lovely", " the song is boring", "toy"),
    ]

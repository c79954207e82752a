"""Time and peak memory of every hypergradient method against the number of inner steps K.

Problem: a one-block transformer policy (d = 256, softmax attention written out, GELU MLP) scores
``C`` candidate responses per prompt; θ = rank-8 LoRA factors on four 256×256 weights (W_q, W_v,
W_o, W_mlp; 16,384 parameters), φ = a linear reward head on mean-pooled base-model features
(257 parameters). Inner loss: reward-weighted regression ([OODPL] Eq. 10); outer loss:
Bradley–Terry on the policy ([OODPL] Eq. 6–7). Each K draws fresh minibatches.

Methods: ``unrolled``, ``truncated`` (T = 1), ``first_order`` (R = 0.01), ``neumann`` (8 terms),
``cg`` (8 iterations), and for contrast ``full_graph``: plain autograd through all K steps with
``create_graph=True`` (what the reverse recurrence avoids).

Every (method, K) runs in a fresh subprocess so peaks do not leak between rows. Peak memory:
* CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocation before the call (tensors only);
* CPU (glibc): bytes in use by ``malloc`` (``mallinfo2().uordblks + hblkhd``, where torch's CPU
  tensors live), sampled every 0.5 ms by a background thread, peak minus the value just before
  the call. RSS is not used because glibc keeps freed heap pages resident (fragmentation), which
  made RSS grow with K even where live memory does not; without glibc the script falls back to
  the RSS high-water mark (``/proc/self/statm`` sampled, ``getrusage().ru_maxrss``).
  Sampling can miss spikes shorter than 0.5 ms, so treat differences < ~1 MiB as noise.
Before measuring, each subprocess runs a K-independent warm-up (one unrolled hypergradient with
K = 1: kernels, autograd engine, allocator).
Time: wall-clock of one call (after the warm-up), ``torch.cuda.synchronize()`` on GPU.

Usage::

    python benchmarks/hypergrad.py                 # CPU, K = 1 4 16 64, all methods
    python benchmarks/hypergrad.py --device cuda --ks 1 4 16 64 256

Never run as a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from _common import _heap_probe, _PeakSampler, _rss_bytes  # shared with the other benchmarks

from oodpl.core.hypergrad import hypergradient
from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss

METHODS = {
    "unrolled": {},
    "truncated": {"truncate": 1},
    "first_order": {"radius": 0.01},
    "neumann": {"terms": 8},
    "cg": {"terms": 8},
    "full_graph": None,
}
LORA_TARGETS = ("q", "v", "o", "mlp")


def build_problem(args, device):
    gen = torch.Generator().manual_seed(0)
    d, rank = args.dim, args.rank

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(device)

    base = {name: rand(d, d, scale=d**-0.5) for name in ("q", "k", "v", "o", "mlp")}
    policy_head = rand(d, scale=d**-0.5)
    theta0 = {}
    for name in LORA_TARGETS:
        theta0[f"{name}.A"] = rand(rank, d, scale=d**-0.5)
        theta0[f"{name}.B"] = rand(d, rank, scale=0.01)
    phi = {"reward.w": rand(d, scale=d**-0.5), "reward.b": torch.zeros((), device=device)}

    def weight(theta, name):
        if name in LORA_TARGETS:
            return base[name] + theta[f"{name}.B"] @ theta[f"{name}.A"]
        return base[name]

    def hidden(theta, tokens):  # tokens: [N, T, d]
        q = tokens @ weight(theta, "q").T
        k = tokens @ weight(theta, "k").T
        v = tokens @ weight(theta, "v").T
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)  # eager attention
        h = tokens + (attn @ v) @ weight(theta, "o").T
        h = h + F.gelu(h @ weight(theta, "mlp").T)
        return h.mean(1)  # [N, d]

    def candidate_logps(theta, tokens):  # tokens: [P, C, T, d] -> log π(c | prompt) [P, C]
        p, c, t, _ = tokens.shape
        scores = (hidden(theta, tokens.reshape(p * c, t, d)) @ policy_head).reshape(p, c)
        return torch.log_softmax(scores, -1)

    def inner_loss(theta, phi_, batch):
        tokens, responses = batch
        rows = torch.arange(len(responses), device=device)
        logps = candidate_logps(theta, tokens)[rows, responses]
        pooled = tokens[rows, responses].mean(1)  # base features of the sampled responses
        rewards = pooled @ phi_["reward.w"] + phi_["reward.b"]
        n_tok = torch.full_like(logps, float(tokens.shape[2]))
        return reward_weighted_regression_loss(logps * n_tok, n_tok, rewards, beta=1.0)

    def outer_loss(theta, batch):
        tokens, chosen, rejected = batch
        rows = torch.arange(len(chosen), device=device)
        logps = candidate_logps(theta, tokens)
        ones = torch.ones(len(chosen), device=device)
        return policy_preference_loss(logps[rows, chosen], ones, logps[rows, rejected], ones)

    def support_batch():
        tokens = rand(args.prompts, args.candidates, args.seq, d)
        responses = torch.randint(0, args.candidates, (args.prompts,), generator=gen).to(device)
        return tokens, responses

    def query_batch():
        tokens = rand(args.prompts, args.candidates, args.seq, d)
        chosen = torch.randint(0, args.candidates, (args.prompts,), generator=gen)
        rejected = (chosen + 1) % args.candidates
        return tokens, chosen.to(device), rejected.to(device)

    return inner_loss, outer_loss, theta0, phi, support_batch, query_batch


def full_graph_hypergradient(inner_loss, outer_loss, theta0, phi, batches, query, lr):
    """Reference: autograd through the whole unrolled graph (memory grows with K)."""
    live_phi = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    theta = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    for batch in batches:
        loss = inner_loss(theta, live_phi, batch)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {k: theta[k] - lr * g for k, g in zip(theta, grads, strict=True)}
    grads = torch.autograd.grad(outer_loss(theta, query), list(live_phi.values()))
    return dict(zip(live_phi, grads, strict=True))


def worker(args) -> dict[str, float]:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    inner, outer, theta0, phi, support_batch, query_batch = build_problem(args, device)
    batches = [support_batch() for _ in range(args.k)]
    query = query_batch()
    # warm-up: one forward/backward of each loss (kernels, allocator), independent of K
    leaves = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    torch.autograd.grad(
        inner(leaves, phi, batches[0]) + outer(leaves, query), list(leaves.values())
    )
    del leaves
    gc.collect()

    def call():
        if args.method == "full_graph":
            return full_graph_hypergradient(inner, outer, theta0, phi, batches, query, args.lr)
        options = METHODS[args.method]
        return hypergradient(
            inner, outer, theta0, phi, batches, query, lr=args.lr, method=args.method, **options
        ).grad

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        grad = call()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - before
    else:
        read, _ = _heap_probe()
        before = read()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with _PeakSampler(read) as sampler:
            start = time.perf_counter()
            grad = call()
            seconds = time.perf_counter() - start
        peak_bytes = sampler.peak
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if read is _rss_bytes and maxrss_after > maxrss_before:
            peak_bytes = max(peak_bytes, maxrss_after)
        peak = max(0, peak_bytes - before)
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grad.values()))
    return {"seconds": seconds, "peak_mib": peak / 2**20, "grad_norm": norm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (small problem)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    n_theta = len(LORA_TARGETS) * 2 * args.rank * args.dim
    print(
        f"device={args.device} dim={args.dim} rank={args.rank} |θ|={n_theta} |φ|={args.dim + 1} "
        f"batch={args.prompts} prompts x {args.candidates} candidates x {args.seq} tokens "
        f"threads={args.threads} torch={torch.__version__}"
    )
    cuda = args.device.startswith("cuda")
    memory = "CUDA max_memory_allocated increase" if cuda else _heap_probe()[1]
    results: dict[tuple[str, int], dict[str, float]] = {}
    forwarded = ("device", "dim", "rank", "prompts", "candidates", "seq", "lr", "threads")
    shared = [f"--{name}={getattr(args, name)}" for name in forwarded]
    for method in args.methods:
        for k in args.ks:
            command = [sys.executable, __file__, "--worker", f"--method={method}", f"--k={k}"]
            done = subprocess.run(command + shared, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                results[(method, k)] = {"error": tail}  # type: ignore[dict-item]
            else:
                results[(method, k)] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {method:12s} K={k:<4d} {results[(method, k)]}", file=sys.stderr)

    header = "| method | " + " | ".join(f"K={k}" for k in args.ks) + " |"
    print(f"\nwall time (s) / {memory} (MiB)\n")
    print(header)
    print("|" + "---|" * (len(args.ks) + 1))
    for method in args.methods:
        cells = []
        for k in args.ks:
            row = results[(method, k)]
            if "error" in row:
                cells.append("error")
            else:
                cells.append(f"{row['seconds']:.3f} s / {row['peak_mib']:.1f}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    exact = {k: results.get(("unrolled", k), {}).get("grad_norm") for k in args.ks}
    print("\n|g| per K (unrolled):", {k: f"{v:.4g}" for k, v in exact.items() if v is not None})


if __name__ == "__main__":
    main()

"""Cost of one OODPL meta-step against K+1 plain LoRA steps, per hypergradient method and K.

Problem ([OODPL] Alg. 1, METHODS §3) built from oodpl's meta-trainer pieces: policy and reward
model are ``pythia-tiny`` (random weights, ``--preset``) with LoRA r = 8 on ``query_key_value``;
``θ`` = the policy's LoRA factors + LM-head copy (oodpl's default ``LoraSpec``, as in the paper),
``φ`` = the reward model's LoRA factors + value head. ``L_in`` is the reward-weighted regression
of ``oodpl.models.trainers.meta.BilevelObjective.inner_loss`` ([OODPL] Eq. 10, softmax weights,
β = 1), ``L_out`` the policy preference loss of ``BilevelObjective.outer_loss`` (Eq. 6-7).
Support batches: ``--batch`` completions of prompt ``--prompt-len`` + response
``--response-len`` (+eos) tokens; query batch: ``--batch`` preference pairs of the same shape.
Batches are collated before timing. Both models in eval mode, as ``train_meta`` runs them.

Rows:
* ``plain K+1``: K+1 plain LoRA steps ``θ ← θ − α ∇_θ L_in(θ; φ)`` (φ held constant, one forward
  and backward of the policy plus a no-grad reward forward per step), with the models' own
  (fused SDPA) attention kernels; the denominator of every ratio;
* a meta-step: ``oodpl.core.hypergrad.hypergradient(method=…)`` over K support batches and the
  query batch, then an SGD step on φ. ``unrolled`` (exact), ``truncated`` (T = 1),
  ``first_order`` (R = 0.01, central finite differences of first-order gradients),
  ``first_order_fwd`` (the same with ``scheme="forward"``: one-sided differences against the
  inner loop's gradients, one gradient evaluation per reverse step, ``O(R)`` error),
  ``neumann`` and ``cg`` (``--terms`` each). ``θ`` and ``φ`` are the only tensors
  differentiated (the base weights are frozen). The models keep their fused SDPA kernels;
  the exact methods restrict SDPA to its math kernel only inside the steps they differentiate
  twice (the fused kernels have no double backward), as in ``train_meta``; ``first_order``
  never needs it. ``L_in`` is a ``SeparableInnerLoss`` (``φ`` only through the support
  rewards) with per-sample reward Jacobians (``MetaTrainConfig.reward_jacobian``, on by
  default): each support batch is scored once per meta-step, by one reward forward + backward
  giving ``∂r_φ(x_i, y_i)/∂φ`` for every row, and every ``J_kᵀ v`` of the reverse pass is a
  contraction of that Jacobian (no reward-model pass in the reverse pass). The query batch is
  packed (prefix-shared, ``MetaTrainConfig.pack_queries``);
* ``full_graph``: plain autograd through all K steps with ``create_graph=True`` (what the reverse
  recurrence avoids; memory grows with K; SDPA on its math kernel throughout);
* ``higher``: the same unrolled problem through the ``higher`` library (``innerloop_ctx`` around
  the policy module, ``DifferentiableSGD`` over θ, ``copy_initial_weights=False``; the reward
  model's live parameters are φ), then ``autograd.grad`` of ``L_out`` w.r.t. φ.

Implicit methods (``neumann``, ``cg``) assume ``θ^K`` is the inner optimum; after a few steps of
a transformer's inner problem it is not, and ``H`` is indefinite, so their gradients differ from
the unrolled one (CG stops at negative curvature and says so; rows that warned are marked
``(w)``; ``--damping`` adds ``λI``). Their cost is still what this table measures.

Time: for each K, one process times every row interleaved: one warm-up call each, then
``--repeats`` rounds calling every row once (the order rotates each round); the table shows the
best round per row (as ``timeit`` advises: slower rounds only add other processes' interference on
a shared machine; the median is in the per-row lines on stderr). Ratio = meta-step time / time of
K+1 plain steps (same process, same rounds); in brackets the median over the rounds of each round's
own ratio (paired, so a slow moment of the machine inflates both times of that round alike). Peak
memory: each (method, K) runs in a fresh subprocess (one K = 1 warm-up call, then one measured
call); the increase during the measured call over the memory just before it
(``_common.PeakMemory``: CUDA ``max_memory_allocated``, or glibc ``malloc`` in-use bytes sampled
every 0.5 ms on CPU), so it counts the call's activations, graphs and iterates, not the models. The
unrolled gradient's norm is printed to check methods agree.

Usage::

    pip install -r benchmarks/requirements.txt     # for the `higher` row
    python benchmarks/meta_step.py --quick          # K = 1 4, few methods
    python benchmarks/meta_step.py                  # K = 1 4 16, all methods, CPU
    python benchmarks/meta_step.py --device cuda --ks 1 4 16 64

Never run as a test.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _common import (
    PeakMemory,
    hardware_line,
    markdown_table,
    memory_label,
    synchronize,
    synthetic_completions,
    synthetic_preferences,
    word_tokenizer,
)

from oodpl.core.hypergrad import hypergradient
from oodpl.models.lora import LoraSpec, second_order_attention
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel

METHODS = {  # row -> (oodpl.core.hypergrad method, options)
    "unrolled": ("unrolled", {}),
    "truncated": ("truncated", {"truncate": 1}),
    "first_order": ("first_order", {"radius": 0.01}),
    "first_order_fwd": ("first_order", {"radius": 0.01, "scheme": "forward"}),
    "neumann": ("neumann", {}),
    "cg": ("cg", {}),
}
# rows that build graphs through every step themselves: SDPA restricted to its math kernel
# throughout (oodpl's hypergradients restrict it only inside their double-backward steps)
WHOLE_GRAPH = ("full_graph", "higher")
ROWS = ("plain", *METHODS, "full_graph", "higher")


LORA = LoraSpec(r=8, alpha=16.0)  # θ: policy LoRA + LM-head copy; φ: reward LoRA + value head


def build_models(args) -> tuple[Policy, RewardModel]:
    """Policy and reward model on preset ``args.preset`` (random weights, word tokenizer)."""
    tokenizer = word_tokenizer(args.vocab)
    policy = Policy.from_preset(args.preset, tokenizer, seed=args.seed, lora=LORA)
    reward = RewardModel.from_preset(args.preset, tokenizer, seed=args.seed + 1, lora=LORA)
    return policy, reward


def build_problem(args, models: tuple[Policy, RewardModel] | None = None):
    """(objective, θ_init, φ, support batches, query batch) on ``args.device``, for ``models``
    (default: :func:`build_models`)."""
    try:
        from oodpl.models.trainers.meta import BilevelObjective, MetaTrainConfig
    except ImportError as error:
        raise SystemExit(f"meta_step.py needs oodpl.models.trainers.meta ({error})") from None
    device = torch.device(args.device)
    policy, reward = models if models is not None else build_models(args)
    policy, reward = policy.to(device), reward.to(device)
    policy.eval()
    reward.eval()
    objective = BilevelObjective(policy, reward, MetaTrainConfig(beta=1.0, inner_lr=args.lr))
    support = []  # K + 1 batches: the plain row takes all, a meta-step the first K
    for i in range(args.k + 1):
        records = synthetic_completions(
            args.batch, args.prompt_len, args.response_len, vocab_size=args.vocab, seed=100 + i
        )
        support.append(objective.support_batch(records))
    pairs = synthetic_preferences(
        args.batch,
        args.prompt_len,
        (args.response_len, args.response_len),
        vocab_size=args.vocab,
        seed=7,
    )
    query = objective.query_batch(pairs)
    theta0 = {k: v.detach().clone() for k, v in policy.trainable_parameters().items()}
    phi = reward.trainable_parameters()
    return objective, theta0, phi, support, query


def plain_steps(objective, theta0, phi, batches, lr):
    """K+1 plain LoRA steps (``adapt_policy_parameters``' update, φ constant)."""
    frozen = {k: v.detach() for k, v in phi.items()}
    theta = {k: v.detach() for k, v in theta0.items()}
    for batch in batches:
        leaves = {k: v.clone().requires_grad_(True) for k, v in theta.items()}
        loss = objective.inner_loss(leaves, frozen, batch)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        theta = {k: v - lr * g for (k, v), g in zip(theta.items(), grads, strict=True)}
    return theta


def full_graph(objective, theta0, phi, batches, query, lr):
    """Autograd through the whole unrolled graph (memory grows with K)."""
    theta = {k: v.detach().requires_grad_(True) for k, v in theta0.items()}
    for batch in batches:
        loss = objective.inner_loss(theta, phi, batch)
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {k: theta[k] - lr * g for k, g in zip(theta, grads, strict=True)}
    outer = objective.outer_loss(theta, query)
    return dict(zip(phi, torch.autograd.grad(outer, list(phi.values())), strict=True))


def _allow_abc_modules(higher) -> None:
    """Let ``higher`` patch modules whose class lists ``nn.Module`` before ``ABC`` (peft's
    ``BaseTuner(nn.Module, ABC)``, ``LoraLayer``): higher 0.2.1 subclasses every module type
    together with its ``_MonkeyPatchBase(ABC, nn.Module)``, which has no consistent MRO with
    those ("Cannot create a consistent method resolution order"). The shim is the same class
    without the ``ABC`` base (its only abstract method is ``__init__``, always overridden)."""
    patch = higher.patch
    base = patch._MonkeyPatchBase
    if base.__bases__ == (torch.nn.Module,):
        return
    skip = {"__dict__", "__weakref__", "__abstractmethods__", "_abc_impl"}
    namespace = {k: v for k, v in vars(base).items() if k not in skip}
    patch._MonkeyPatchBase = type("_MonkeyPatchBase", (torch.nn.Module,), namespace)


def higher_unrolled(objective, theta0, phi, batches, query, lr):
    """The unrolled hypergradient through ``higher`` (see the module docstring)."""
    try:
        import higher
    except ImportError:
        raise RuntimeError(
            "higher is not installed (pip install -r benchmarks/requirements.txt)"
        ) from None
    from oodpl.core.losses import policy_preference_loss, reward_weighted_regression_loss

    _allow_abc_modules(higher)
    policy, reward = objective.policy, objective.reward_model
    live = policy.trainable_parameters()
    with torch.no_grad():  # reset θ to θ_init (the meta-step starts from the SFT policy)
        for name, value in theta0.items():
            live[name].copy_(value)
    optimizer = torch.optim.SGD(list(live.values()), lr=lr)
    config = objective.config
    with higher.innerloop_ctx(policy, optimizer, copy_initial_weights=False) as (fpolicy, diffopt):
        for batch in batches:
            rewards = reward.functional_rewards(phi, batch["reward"])
            logps, n_tokens = fpolicy(batch["policy"])
            loss = reward_weighted_regression_loss(
                logps, n_tokens, rewards, beta=config.beta, weighting=config.weighting
            )
            diffopt.step(loss)
        outer = policy_preference_loss(*fpolicy(query))
        grads = torch.autograd.grad(outer, list(phi.values()))
    return dict(zip(phi, grads, strict=True))


def run_once(method, args, objective, theta0, phi, batches, query):
    """One call: the meta-step of ``method`` on ``batches`` (K support batches; the plain row
    takes K + 1 plain steps on them). Returns the hypergradient (None for the plain row)."""
    if method == "plain":
        plain_steps(objective, theta0, phi, batches, args.lr)
        return None
    if method == "full_graph":
        grad = full_graph(objective, theta0, phi, batches, query, args.lr)
    elif method == "higher":
        grad = higher_unrolled(objective, theta0, phi, batches, query, args.lr)
    else:
        name, options = METHODS[method][0], dict(METHODS[method][1])
        if name in ("neumann", "cg"):
            options.update(terms=args.terms, damping=args.damping)
        grad = hypergradient(
            objective.inner_loss,
            objective.outer_loss,
            theta0,
            phi,
            batches,
            query,
            lr=args.lr,
            method=name,
            **options,
        ).grad
    with torch.no_grad():  # the outer SGD step on φ (paper: SGD)
        for name, g in grad.items():
            phi[name].sub_(args.outer_lr * g)
    return grad


def _call(method, args, problem, phi_init, k):
    """Reset φ, then one synchronised call of ``method`` with K (+1 for plain) batches."""
    objective, theta0, phi, support, query = problem
    batches = support if method == "plain" else support[:k]
    with torch.no_grad():
        for name, value in phi_init.items():
            phi[name].copy_(value)
    attention = second_order_attention() if method in WHOLE_GRAPH else contextlib.nullcontext()
    synchronize(args.device)
    with attention:
        start = time.perf_counter()
        grad = run_once(method, args, objective, theta0, phi, batches, query)
        synchronize(args.device)
    return grad, time.perf_counter() - start


def time_worker(args) -> dict[str, dict]:
    """All methods at one K in one process, interleaved: after one warm-up call each,
    ``repeats`` rounds call every method once (the order rotates each round); the best (and
    the median) per method. Interleaving spreads any background load over all rows alike."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    problem = build_problem(args)
    phi_init = {k: v.detach().clone() for k, v in problem[2].items()}
    methods = ["plain", *args.methods]
    times: dict[str, list[float]] = {m: [] for m in methods}
    out: dict[str, dict] = {m: {} for m in methods}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reported by the memory workers
        for method in methods:
            try:
                _call(method, args, problem, phi_init, args.k)
            except Exception as error:  # a failing row must not stop the others
                out[method]["error"] = f"{type(error).__name__}: {error}"[:200]
        live = [m for m in methods if "error" not in out[m]]
        for repeat in range(args.repeats):
            shift = repeat % len(live)
            for method in live[shift:] + live[:shift]:
                _, seconds = _call(method, args, problem, phi_init, args.k)
                times[method].append(seconds)
                gc.collect()
    for method in live:  # best of the rounds: later ones only add other processes' interference
        out[method]["seconds"] = min(times[method])
        out[method]["median_seconds"] = statistics.median(times[method])
        if "plain" in live and method != "plain":  # paired: each round against its own plain row
            paired = [t / p for t, p in zip(times[method], times["plain"], strict=True)]
            out[method]["paired_ratio"] = statistics.median(paired)
    return out


def memory_worker(args) -> dict[str, float]:
    """Peak memory of ONE call of ``args.method`` in a fresh process (after a K = 1 warm-up),
    its hypergradient's norm and any RuntimeWarning."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    problem = build_problem(args)
    theta0, phi = problem[1], problem[2]
    phi_init = {k: v.detach().clone() for k, v in phi.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        _call(args.method, args, problem, phi_init, 1)  # K-independent warm-up
        gc.collect()
        with PeakMemory(args.device) as meter:
            grad, _ = _call(args.method, args, problem, phi_init, args.k)
    result = {"peak_mib": meter.peak_mib}
    flagged = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if flagged:
        result["warning"] = flagged[0][:160]
    if grad is not None:
        result["grad_norm"] = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grad.values()))
    result["n_theta"] = sum(v.numel() for v in theta0.values())
    result["n_phi"] = sum(v.numel() for v in phi.values())
    return result


def _subprocess(extra: list[str], shared: list[str]) -> dict:
    command = [sys.executable, __file__, "--worker", *extra, *shared]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["?"]
        tail = next((line for line in reversed(lines) if "Error" in line), lines[-1])
        return {"error": tail.strip()[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="pythia-tiny")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--methods", nargs="+", default=list(ROWS[1:]), choices=list(ROWS[1:]))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=31)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.1, help="inner step size α")
    parser.add_argument("--outer-lr", type=float, default=1e-3)
    parser.add_argument("--terms", type=int, default=8, help="Neumann terms / CG iterations")
    parser.add_argument("--damping", type=float, default=0.0, help="neumann/cg: H + damping*I")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (best)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="K = 1 4, 3 rounds, 4 methods")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("time", "memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.measure == "time":
            print(json.dumps(time_worker(args)))
        else:
            print(json.dumps(memory_worker(args)))
        return
    if args.quick:
        args.ks, args.repeats = [1, 4], 3
        quick = ("unrolled", "first_order", "first_order_fwd", "higher")
        args.methods = [m for m in args.methods if m in quick]

    torch.set_num_threads(args.threads)
    print(hardware_line(args.device))
    print(
        f"preset {args.preset} (policy + reward model, LoRA r=8), batch {args.batch} x "
        f"({args.prompt_len} + {args.response_len} + eos) tokens, α={args.lr}, "
        f"terms={args.terms}, damping={args.damping}, {args.repeats} interleaved timed rounds, "
        f"threads={args.threads}\n"
    )
    forwarded = [
        "device",
        "preset",
        "batch",
        "prompt_len",
        "response_len",
        "vocab",
        "lr",
        "outer_lr",
        "terms",
        "damping",
        "repeats",
        "threads",
        "seed",
    ]
    shared = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in forwarded]
    results: dict[tuple[str, int], dict] = {}
    for k in args.ks:
        timed = _subprocess([f"--k={k}", "--measure=time", "--methods", *args.methods], shared)
        for method in ("plain", *args.methods):
            row = dict(timed.get(method, {})) if "error" not in timed else dict(timed)
            if "error" not in row:
                memory = _subprocess([f"--k={k}", "--measure=memory", f"--method={method}"], shared)
                row.update(memory)
            results[(method, k)] = row
            print(f"  {method:12s} K={k:<3d} {row}", file=sys.stderr)

    first = next((r for r in results.values() if "n_theta" in r), {})
    print(f"|θ| = {first.get('n_theta', '?')}, |φ| = {first.get('n_phi', '?')}")
    label = memory_label(args.device)
    print(
        f"time (s, best round) / ratio to K+1 plain LoRA steps (best / best; in brackets the "
        f"median over rounds of the same round's ratio) / {label} (MiB)\n"
    )
    header = ["method", *(f"K={k}" for k in args.ks)]
    rows = []
    flagged: dict[str, str] = {}
    for method in ("plain", *args.methods):
        cells = [f"plain {'K+1'} steps" if method == "plain" else method]
        for k in args.ks:
            row = results[(method, k)]
            if "error" in row:
                cells.append(f"error: {row['error']}")
                continue
            base = results[("plain", k)]
            ratio = (
                ""
                if method == "plain" or "error" in base
                else (
                    f" / {row['seconds'] / base['seconds']:.2f}x"
                    f" ({row.get('paired_ratio', float('nan')):.2f}x)"
                )
            )
            mark = " (w)" if "warning" in row else ""
            cells.append(f"{row['seconds']:.3f} s{ratio} / {row['peak_mib']:.1f}{mark}")
            if mark:
                flagged[method] = row["warning"]
        rows.append(cells)
    print(markdown_table(header, rows))
    for method, message in flagged.items():
        print(f"(w) {method}: {message}")
    norms = {}
    for method in args.methods:
        norms[method] = {
            k: f"{results[(method, k)]['grad_norm']:.4g}"
            for k in args.ks
            if "grad_norm" in results[(method, k)]
        }
    print("\n|g| per method and K:", json.dumps(norms))


if __name__ == "__main__":
    main()

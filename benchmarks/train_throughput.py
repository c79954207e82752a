"""Training throughput (pairs/s) and peak memory of oodpl's reward-model and DPO trainers.

Runs the real trainer entry points, unchanged: ``oodpl.models.trainers.reward.train_reward_model``
(Bradley–Terry: ``RewardModel.preference_rewards`` in one concatenated forward +
``oodpl.core.losses.bradley_terry_loss``) and ``oodpl.models.trainers.dpo.train_dpo``
(``Policy.preference_logps`` + reference log-probs + ``oodpl.core.losses.dpo_loss``), each on the
generic engine loop (``oodpl.models.engine``, torch backend, AdamW — the fused kernel, the
engine's default — grad-norm clip 1.0, constant lr), with the trainers' default batching: pairs
tokenised once before the first step (inside ``setup s``), batches packed padding-free with the
prompt run once per pair whenever that saves >= 10 % of the token positions
(``packing="auto"``, ``oodpl.models.trainers.pair_batching``); ``--packing`` changes it. The
engine is built here and passed in, with its ``step`` wrapped to time-stamp the end of every
optimizer step (after ``torch.cuda.synchronize`` on GPU).

Data: synthetic preference pairs with exact token lengths (a word-level tokenizer where each word
is one token, see ``_common.word_tokenizer``): a prompt of ``--prompt-len`` tokens and responses
of ``--response-len`` tokens (or uniform in ``[--response-len, --response-len-max]``), plus the
eos token both trainers append, so a fixed-length sequence has ``P + R + 1`` tokens. Building
each batch from the token lists (padding or packing) is inside the step time.

Figures:
* ``pairs/s``: ``batch × steps / time`` from the end of warm-up step ``--warmup`` to the end of the
  last step (steady state only); ``s/step`` is the median step; ``tok/s`` counts real (non-pad)
  tokens of both responses and both prompts;
* ``setup s``: everything before the first step ends, minus one median step (model build, engine,
  DPO reference log-prob precomputation);
* ``peak MiB``: the increase over the whole run, measured from just before the model is built
  (weights, optimizer state, activations, reference model or log-probs): CUDA
  ``max_memory_allocated`` on GPU; on CPU glibc ``malloc`` in-use bytes sampled every 0.5 ms
  (``_common.PeakMemory``).

Usage::

    python benchmarks/train_throughput.py --quick                  # CPU smoke run, tiny preset
    python benchmarks/train_throughput.py --preset pythia-tiny --batch 16 --prompt-len 128 \\
        --response-len 127 --steps 20
    # GPU (bf16, random-weight Pythia-160M shape):
    python benchmarks/train_throughput.py --preset pythia-160m --device cuda --precision bf16 \\
        --batch 16 --prompt-len 256 --response-len 255 --steps 30 --warmup 5

Never run as a test.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _common import (
    PeakMemory,
    hardware_line,
    markdown_table,
    memory_label,
    steady_rate,
    synchronize,
    synthetic_preferences,
    word_tokenizer,
)

from oodpl.models.engine import EngineConfig, build_engine
from oodpl.models.lora import LoraSpec, count_parameters
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel
from oodpl.models.trainers.dpo import DPOConfig, train_dpo
from oodpl.models.trainers.reward import RewardTrainConfig, train_reward_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class RunSpec:
    """One benchmark configuration (shared with ``vs_trl.py``)."""

    preset: str = "pythia-tiny"
    batch: int = 8
    prompt_len: int = 64
    response_len: int = 63
    response_len_max: int | None = None
    steps: int = 10
    warmup: int = 2
    precision: str = "fp32"
    device: str = "cpu"
    lora: bool = False
    lora_lm_head: bool = False
    lr: float = 1e-5
    beta: float = 0.1
    vocab: int = 1024
    seed: int = 0
    attn: str = "sdpa"

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def response_range(self) -> tuple[int, int]:
        return self.response_len, self.response_len_max or self.response_len

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``RewardModel/Policy.from_preset`` (fp32 master weights)."""
        return {"seed": self.seed, "lora": self.lora_spec(), "attn_implementation": self.attn}

    def lora_spec(self) -> LoraSpec | None:
        if not self.lora:
            return None
        return LoraSpec(r=8, alpha=16.0, train_lm_head=self.lora_lm_head)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            backend="torch",
            precision=self.precision,  # type: ignore[arg-type]
            lr=self.lr,
            weight_decay=0.0,
            max_grad_norm=1.0,
            scheduler="constant",
            micro_batch_size=self.batch,
            max_steps=self.total_steps,
            seed=self.seed,
        )

    def shape(self) -> str:
        low, high = self.response_range
        resp = f"{low}" if low == high else f"U[{low},{high}]"
        mode = "LoRA r=8" if self.lora else "full"
        return (
            f"{self.preset}, {mode}, batch {self.batch}, prompt {self.prompt_len} + response "
            f"{resp} (+eos), {self.precision}, {self.device}"
        )


@dataclass
class RunResult:
    name: str
    pairs_per_s: float
    tokens_per_s: float
    step_s: float
    setup_s: float
    peak_mib: float
    trainable: int = 0
    note: str = ""
    error: str | None = None

    def row(self) -> list[str]:
        if self.error:
            return [self.name, "error", "", "", "", "", self.error]
        return [
            self.name,
            f"{self.pairs_per_s:.2f}",
            f"{self.tokens_per_s:.0f}",
            f"{self.step_s:.3f}",
            f"{self.setup_s:.1f}",
            f"{self.peak_mib:.0f}",
            self.note,
        ]


RESULT_HEADER = ["trainer", "pairs/s", "tok/s", "s/step (median)", "setup s", "peak MiB", "notes"]


def real_tokens(records) -> float:
    """Mean real (non-pad) tokens per pair: the prompt twice, both responses, two eos."""
    total = 0
    for r in records:
        total += 2 * len(r.prompt.split()) + len(r.chosen.split()) + len(r.rejected.split()) + 2
    return total / len(records)


def timed_engine(module: torch.nn.Module, spec: RunSpec, stamps: list[float]):
    """An engine whose ``step`` appends a timestamp after every applied optimizer step."""
    engine = build_engine(module, spec.engine_config(), device=spec.device)
    original_step = engine.step

    def step():
        outcome = original_step()
        if outcome.stepped:
            synchronize(spec.device)
            stamps.append(time.perf_counter())
        return outcome

    engine.step = step  # type: ignore[method-assign]
    return engine


def _finish(
    name: str, spec: RunSpec, start: float, stamps: list[float], meter: PeakMemory, tokens: float
) -> RunResult:
    pairs_per_s, step_s = steady_rate(stamps, spec.warmup, spec.batch)
    setup = stamps[0] - start - step_s
    return RunResult(
        name=name,
        pairs_per_s=pairs_per_s,
        tokens_per_s=pairs_per_s * tokens,
        step_s=step_s,
        setup_s=max(setup, 0.0),
        peak_mib=meter.peak_mib,
    )


def run_oodpl_rm(spec: RunSpec, tokenizer, records, packing: str = "auto") -> RunResult:
    """``train_reward_model`` (objective ``"bt"``) on ``records``."""
    stamps: list[float] = []
    tokens = real_tokens(records)
    with PeakMemory(spec.device) as meter:
        start = time.perf_counter()
        model = RewardModel.from_preset(spec.preset, tokenizer, **spec.model_kwargs())
        trainable = count_parameters(model)[0]
        engine = timed_engine(model, spec, stamps)
        config = RewardTrainConfig(packing=packing, group_by_length=False)
        train_reward_model(model, records, config, engine=engine, max_steps=spec.total_steps)
        synchronize(spec.device)
        del engine, model
    label = "oodpl RM (BT)" + ("" if packing == "auto" else f", packing {packing}")
    result = _finish(label, spec, start, stamps, meter, tokens)
    result.trainable = trainable
    return result


def run_oodpl_dpo(
    spec: RunSpec, tokenizer, records, reference: str = "precomputed", packing: str = "auto"
) -> RunResult:
    """``train_dpo`` (sigmoid loss, β = ``spec.beta``) with ``reference`` = precomputed | model."""
    stamps: list[float] = []
    tokens = real_tokens(records)
    with PeakMemory(spec.device) as meter:
        start = time.perf_counter()
        policy = Policy.from_preset(spec.preset, tokenizer, **spec.model_kwargs())
        trainable = count_parameters(policy)[0]
        engine = timed_engine(policy, spec, stamps)
        config = DPOConfig(
            beta=spec.beta,
            reference=reference,
            reference_batch_size=spec.batch,
            packing=packing,
            group_by_length=False,
        )
        train_dpo(policy, records, config, engine=engine, max_steps=spec.total_steps)
        synchronize(spec.device)
        del engine, policy
    label = f"oodpl DPO (ref {reference})" + ("" if packing == "auto" else f", packing {packing}")
    result = _finish(label, spec, start, stamps, meter, tokens)
    result.trainable = trainable
    return result


def cleanup(device: str) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def guarded(
    fn: Callable[..., RunResult], name: str, spec: RunSpec, *args: Any, **kwargs: Any
) -> RunResult:
    """``fn(spec, *args, **kwargs)``; an exception becomes an error row (last message line)."""
    try:
        return fn(spec, *args, **kwargs)
    except Exception as error:
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:160]}"
        print(f"  {name}: {message}", file=sys.stderr)
        return RunResult(name, 0, 0, 0, 0, 0, error=message)
    finally:
        cleanup(spec.device)


def add_run_arguments(parser: argparse.ArgumentParser, defaults: RunSpec) -> None:
    """The CLI options of :class:`RunSpec` (shared with ``vs_trl.py``)."""
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="pairs per step")
    parser.add_argument("--prompt-len", type=int, default=defaults.prompt_len)
    parser.add_argument(
        "--response-len", type=int, default=defaults.response_len, help="tokens, eos excluded"
    )
    parser.add_argument(
        "--response-len-max",
        type=int,
        default=defaults.response_len_max,
        help="variable lengths: responses uniform in [--response-len, this]",
    )
    parser.add_argument("--steps", type=int, default=defaults.steps, help="measured steps")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="unmeasured steps")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=defaults.precision)
    parser.add_argument(
        "--device", default=defaults.device or ("cuda" if torch.cuda.is_available() else "cpu")
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--lora", dest="lora", action="store_true", help="LoRA r=8, qkv")
    group.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning")
    parser.set_defaults(lora=defaults.lora)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--beta", type=float, default=defaults.beta)
    parser.add_argument("--vocab", type=int, default=defaults.vocab, help="tokenizer size")
    parser.add_argument("--attn", default=defaults.attn, help="attn_implementation")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default 1 on CPU: on a shared machine several threads "
        "stall each other; all cores on GPU runs)",
    )


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    threads = args.threads or (1 if torch.device(args.device).type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if args.warmup < 1 or args.steps < 1:
        raise SystemExit("--warmup and --steps must be >= 1")
    return RunSpec(
        preset=args.preset,
        batch=args.batch,
        prompt_len=args.prompt_len,
        response_len=args.response_len,
        response_len_max=args.response_len_max,
        steps=args.steps,
        warmup=args.warmup,
        precision=args.precision,
        device=args.device,
        lora=args.lora,
        lora_lm_head=getattr(args, "lora_lm_head", False),
        lr=args.lr,
        beta=args.beta,
        vocab=args.vocab,
        seed=args.seed,
        attn=args.attn,
    )


def make_data(spec: RunSpec):
    tokenizer = word_tokenizer(spec.vocab)
    records = synthetic_preferences(
        spec.batch * spec.total_steps,
        spec.prompt_len,
        spec.response_range,
        vocab_size=spec.vocab,
        seed=spec.seed,
    )
    return tokenizer, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, RunSpec(device=""))
    parser.add_argument("--trainer", choices=("rm", "dpo", "both"), default="both")
    parser.add_argument(
        "--reference",
        choices=("precomputed", "model", "both"),
        default="precomputed",
        help="DPO reference: precomputed log-probs (oodpl default) or a frozen model copy",
    )
    parser.add_argument(
        "--lora-lm-head", action="store_true", help="with --lora: also train the LM head (policy)"
    )
    parser.add_argument(
        "--packing",
        nargs="+",
        choices=("auto", "always", "never"),
        default=["auto"],
        help="batching path(s) of the trainers (oodpl.models.trainers.pair_batching)",
    )
    parser.add_argument("--quick", action="store_true", help="3 measured steps, short sequences")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
        args.prompt_len, args.response_len = min(args.prompt_len, 32), min(args.response_len, 31)
    spec = spec_from_args(args)
    tokenizer, records = make_data(spec)
    print(hardware_line(spec.device))
    print(f"shape: {spec.shape()}; {spec.warmup} warm-up + {spec.steps} measured steps\n")
    results: list[RunResult] = []
    for packing in args.packing:
        if args.trainer in ("rm", "both"):
            results.append(
                guarded(run_oodpl_rm, "oodpl RM (BT)", spec, tokenizer, records, packing)
            )
        if args.trainer in ("dpo", "both"):
            refs = ("precomputed", "model") if args.reference == "both" else (args.reference,)
            for ref in refs:
                results.append(
                    guarded(
                        run_oodpl_dpo, "oodpl DPO", spec, tokenizer, records, ref, packing=packing
                    )
                )
    for result in results:
        if result.trainable and not result.error:
            result.note = f"{result.trainable:,} trainable params"
    print(f"peak memory: {memory_label(spec.device)} from before model build\n")
    print(markdown_table(RESULT_HEADER, [r.row() for r in results]))


if __name__ == "__main__":
    main()

"""oodpl's reward-model and DPO trainers against TRL's ``RewardTrainer`` and ``DPOTrainer``.

One process runs, back to back, on the same random-weight model config (built by
``oodpl.models.presets``, same seed, same ``attn_implementation``), the same synthetic pairs with
exact token lengths (``_common.word_tokenizer``: one word = one token, so oodpl's collator and
TRL's tokenisation give identical sequences: prompt ⊕ response ⊕ eos), the same batch, precision
and optimiser settings:

* AdamW, the fused kernel on both sides (oodpl's engine default ``optimizer_impl="auto"``;
  TRL's default ``optim``, ``adamw_torch_fused`` with torch >= 2.8; ``--trl-optim adamw_torch``
  gives TRL the foreach implementation), lr ``--lr``, no weight decay, constant schedule, no
  warm-up, gradient-norm clip 1.0, no gradient accumulation;
* gradient checkpointing off for both (TRL's configs default it to on), no evaluation, no saving,
  TRL ``logging_strategy="no"``, ``report_to="none"``, no progress bar, dataloader in-process;
* TRL ``max_length=None`` (no filtering or truncation), default loss ``sigmoid`` with β ``--beta``;
* LoRA (``--lora``): r = 8, α = 16 on ``query_key_value`` for both; TRL's ``SEQ_CLS`` task adds
  the score head to the trainable set, as oodpl trains its value head; no LM-head training.

Batches are identical: both see the pairs in oodpl's loop order (TRL's train sampler is replaced
by that index sequence, a private-API patch of ``Trainer._get_train_sampler``). Timing covers
exactly one epoch of ``--steps`` steps after a warm-up epoch over the same data (``2 × steps``
optimizer steps in all), so every pair is measured once whatever the batching. Pre-processing
outside the step (both tokenise the dataset up front) and the DPO reference pre-computation are
reported as ``setup s``.

oodpl runs its trainers' defaults: ``packing="auto"`` (``oodpl.models.trainers.pair_batching``:
padding-free batches in which each pair's prompt runs once, ``oodpl.models.shared_prefix``,
whenever that saves >= 10 % of the token positions of the padded batch; else padded),
``group_by_length`` off (so both sides see the same pairs in the same batches).
``--oodpl-padded`` adds oodpl rows with ``packing="never"`` (what packing buys).

Rows. RM: oodpl ``train_reward_model`` (BT) vs ``RewardTrainer``. DPO: oodpl ``train_dpo`` with a
frozen reference model (``reference="model"``) vs ``DPOTrainer`` defaults (reference forward every
step; with LoRA: adapter-disabled forward), and oodpl's default pre-computed reference vs
``precompute_ref_log_probs=True``. "TRL best" rows add the speed options the installed TRL
actually offers: ``train_sampling_strategy="group_by_length"`` (transformers' length-grouped
batches, variable-length case only; then the sampler is TRL's, not oodpl's order) and the
pre-computed reference. Not available here: ``padding_free`` (TRL 1.16's DPOTrainer warns that
it is "temporarily unavailable" and falls back to padding; RewardTrainer has none), Liger
kernels (Triton, GPU only; not installed).

Peak memory as in ``train_throughput.py`` (from just before each model is built; CUDA
``max_memory_allocated`` on GPU, glibc ``malloc`` in-use bytes on CPU). Ratios are oodpl / TRL
(pairs/s > 1: oodpl faster; memory < 1: oodpl leaner).

Cases: ``fixed`` (prompt ``--prompt-len`` + response ``--response-len``) and ``variable``
(responses uniform in ``[--var-min, --var-max]``).

Usage::

    pip install -r benchmarks/requirements.txt          # TRL (benchmarks only)
    python benchmarks/vs_trl.py --quick                 # CPU smoke run
    python benchmarks/vs_trl.py                         # CPU, tiny preset
    # GPU anchor: Pythia-160M config, bf16, prompt 256 + response 255, batch 16
    python benchmarks/vs_trl.py --preset pythia-160m --precision bf16 --device cuda \\
        --batch 16 --prompt-len 256 --response-len 255 --var-min 32 --var-max 512 --steps 20

Never run as a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

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
from train_throughput import (
    RESULT_HEADER,
    RunResult,
    RunSpec,
    add_run_arguments,
    guarded,
    real_tokens,
    run_oodpl_dpo,
    run_oodpl_rm,
    spec_from_args,
)

from oodpl.models.engine.distributed import global_batches
from oodpl.models.presets import build_model, build_model_from_config, preset_config

TRL_REQUIREMENT = "trl (pip install -r benchmarks/requirements.txt)"


def require_trl():
    try:
        import trl
    except ImportError as error:
        raise SystemExit(
            f"vs_trl.py needs {TRL_REQUIREMENT}; TRL is a benchmark-only dependency and is not "
            f"installed in this environment ({error})"
        ) from None
    return trl


def loop_order(n_items: int, spec: RunSpec, epochs: int) -> list[int]:
    """The item order oodpl's engine loop visits over ``epochs`` epochs (seeded permutations)."""
    order: list[int] = []
    for epoch in range(epochs):
        for batch in global_batches(
            n_items, global_batch_size=spec.batch, seed=spec.seed, epoch=epoch
        ):
            order.extend(batch)
    return order


def trl_dataset(records, *, with_length: bool = False):
    """TRL's explicit-prompt preference format; responses keep the separating space."""
    from datasets import Dataset

    rows = []
    for r in records:
        row = {"prompt": r.prompt, "chosen": " " + r.chosen, "rejected": " " + r.rejected}
        if with_length:
            n_prompt = len(r.prompt.split())
            row["length"] = n_prompt + max(len(r.chosen.split()), len(r.rejected.split())) + 1
        rows.append(row)
    return Dataset.from_list(rows)


TRL_OPTIM: str | None = None  # --trl-optim: None keeps TRL's default (adamw_torch_fused)
OODPL_PADDED = False  # --oodpl-padded: add oodpl rows with packing="never"


def trl_common_args(spec: RunSpec, output_dir: str, group_by_length: bool) -> dict[str, Any]:
    extra = {"optim": TRL_OPTIM} if TRL_OPTIM else {}
    return {
        **extra,
        "output_dir": output_dir,
        "per_device_train_batch_size": spec.batch,
        "gradient_accumulation_steps": 1,
        "max_steps": spec.total_steps,
        "learning_rate": spec.lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "gradient_checkpointing": False,
        "bf16": spec.precision == "bf16",
        "fp16": spec.precision == "fp16",
        "use_cpu": torch.device(spec.device).type == "cpu",
        "logging_strategy": "no",
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.device(spec.device).type == "cuda",
        "seed": spec.seed,
        "max_length": None,
        "train_sampling_strategy": "group_by_length" if group_by_length else "sequential",
        "remove_unused_columns": not group_by_length,  # keep "length" for the sampler
    }


def trl_lora(task_type: str):
    from peft import LoraConfig

    return LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["query_key_value"],
        task_type=task_type,
    )


class _StepClock:
    """A ``TrainerCallback`` time-stamping the end of every optimizer step."""

    def __init__(self, device: str, stamps: list[float]) -> None:
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                synchronize(clock.device)
                clock.stamps.append(time.perf_counter())

        self.device, self.stamps, self.callback = device, stamps, Callback()


def _run_trl(name, spec, records, build_trainer, group_by_length: bool) -> RunResult:
    from transformers import PrinterCallback

    stamps: list[float] = []
    tokens = real_tokens(records)
    clock = _StepClock(spec.device, stamps)
    with tempfile.TemporaryDirectory() as output_dir, PeakMemory(spec.device) as meter:
        start = time.perf_counter()
        trainer = build_trainer(output_dir)
        trainer.add_callback(clock.callback)
        trainer.remove_callback(PrinterCallback)  # no end-of-training metrics print
        if not group_by_length:
            order = loop_order(len(records), spec, epochs=2)
            trainer._get_train_sampler = lambda *_a, **_k: order  # oodpl's batches, in order
        trainer.train()
        synchronize(spec.device)
        del trainer
    pairs_per_s, step_s = steady_rate(stamps, spec.warmup, spec.batch)
    return RunResult(
        name=name,
        pairs_per_s=pairs_per_s,
        tokens_per_s=pairs_per_s * tokens,
        step_s=step_s,
        setup_s=max(stamps[0] - start - step_s, 0.0),
        peak_mib=meter.peak_mib,
    )


def run_trl_rm(spec: RunSpec, tokenizer, records, *, group_by_length: bool = False) -> RunResult:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    def build(output_dir: str):
        config = preset_config(spec.preset, tokenizer)
        config.num_labels = 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = AutoModelForSequenceClassification.from_config(
                config, attn_implementation=spec.attn
            )
        args = RewardConfig(**trl_common_args(spec, output_dir, group_by_length))
        return RewardTrainer(
            model=model,
            args=args,
            train_dataset=trl_dataset(records, with_length=group_by_length),
            processing_class=tokenizer,
            peft_config=trl_lora("SEQ_CLS") if spec.lora else None,
        )

    name = "TRL RewardTrainer" + (" + group_by_length" if group_by_length else "")
    return _run_trl(name, spec, records, build, group_by_length)


def run_trl_dpo(
    spec: RunSpec, tokenizer, records, *, precompute: bool = False, group_by_length: bool = False
) -> RunResult:
    from trl import DPOConfig, DPOTrainer

    def build(output_dir: str):
        model = build_model(spec.preset, tokenizer, seed=spec.seed, attn_implementation=spec.attn)
        ref_model = None
        if not spec.lora and not precompute:  # TRL would otherwise reload the model by name
            ref_model = build_model_from_config(
                model.config, seed=spec.seed, attn_implementation=spec.attn
            )
        args = DPOConfig(
            **trl_common_args(spec, output_dir, group_by_length),
            beta=spec.beta,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=spec.batch,
        )
        return DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=trl_dataset(records, with_length=group_by_length),
            processing_class=tokenizer,
            peft_config=trl_lora("CAUSAL_LM") if spec.lora else None,
        )

    name = "TRL DPOTrainer " + ("(precompute_ref_log_probs)" if precompute else "(defaults)")
    if group_by_length:
        name += " + group_by_length"
    return _run_trl(name, spec, records, build, group_by_length)


def run_case(spec: RunSpec, case: str, trainers: str, repeats: int) -> list[list[str]]:
    """All rows of one case, each the median over ``repeats`` interleaved runs."""
    tokenizer = word_tokenizer(spec.vocab)
    records = synthetic_preferences(
        spec.batch * spec.steps,
        spec.prompt_len,
        spec.response_range,
        vocab_size=spec.vocab,
        seed=spec.seed,
    )
    variable = spec.response_range[0] != spec.response_range[1]
    jobs: list[tuple[str, str, Any, dict[str, Any]]] = []
    if trainers in ("rm", "both"):
        jobs += [
            ("rm", "oodpl RM (BT)", run_oodpl_rm, {}),
            ("rm", "TRL RewardTrainer", run_trl_rm, {}),
        ]
        if OODPL_PADDED:
            jobs.append(("rm", "oodpl RM padded", run_oodpl_rm, {"packing": "never"}))
        if variable:
            jobs.append(("rm", "TRL RM best", run_trl_rm, {"group_by_length": True}))
    if trainers in ("dpo", "both"):
        jobs += [
            ("dpo-model", "oodpl DPO (ref model)", run_oodpl_dpo, {"reference": "model"}),
            ("dpo-model", "TRL DPOTrainer (defaults)", run_trl_dpo, {}),
            ("dpo-pre", "oodpl DPO (ref precomputed)", run_oodpl_dpo, {}),
            ("dpo-pre", "TRL DPOTrainer (precompute)", run_trl_dpo, {"precompute": True}),
        ]
        if OODPL_PADDED:
            jobs.append(("dpo-pre", "oodpl DPO padded", run_oodpl_dpo, {"packing": "never"}))
        if variable:
            jobs.append(
                (
                    "dpo-pre",
                    "TRL DPO best",
                    run_trl_dpo,
                    {"precompute": True, "group_by_length": True},
                )
            )
    runs: dict[str, list[RunResult]] = {label: [] for _, label, _, _ in jobs}
    for repeat in range(repeats):
        order = jobs if repeat % 2 == 0 else list(reversed(jobs))  # ABBA against drift
        for _, label, fn, kwargs in order:
            result = guarded(fn, label, spec, tokenizer, records, **kwargs)
            print(f"  [{case} #{repeat + 1}] {label}: {result.row()}", file=sys.stderr)
            runs[label].append(result)

    def median(label: str) -> RunResult | None:
        ok = [r for r in runs[label] if not r.error]
        if not ok:
            return None
        out = replace(ok[0])
        for key in ("pairs_per_s", "tokens_per_s", "step_s", "setup_s", "peak_mib"):
            setattr(out, key, statistics.median(getattr(r, key) for r in ok))
        rates = [r.pairs_per_s for r in ok]
        if len(rates) > 1:
            out.note = f"pairs/s range {min(rates):.1f}-{max(rates):.1f}"
        return out

    rows = []
    groups: dict[str, list[str]] = {}
    for group, label, _, _ in jobs:
        groups.setdefault(group, []).append(label)
    for labels in groups.values():
        ours = median(labels[0])
        for label in labels:
            result = median(label)
            if result is None:
                error = next(r.error for r in runs[label] if r.error)
                rows.append([case, label, "error", "", "", "", "", "", "", error])
                continue
            ratio_rate = ratio_mem = ""
            if ours is not None and label != labels[0]:
                ratio_rate = f"{ours.pairs_per_s / result.pairs_per_s:.2f}"
                ratio_mem = f"{ours.peak_mib / max(result.peak_mib, 1e-9):.2f}"
            cells = result.row()
            rows.append([case, *cells[:6], ratio_rate, ratio_mem, cells[6]])
    return rows


def main() -> None:
    defaults = RunSpec(device="", batch=8, prompt_len=64, response_len=63, steps=6)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, defaults)
    parser.add_argument("--var-min", type=int, default=32, help="variable case: shortest response")
    parser.add_argument("--var-max", type=int, default=512, help="variable case: longest response")
    parser.add_argument(
        "--cases", nargs="+", choices=("fixed", "variable"), default=["fixed", "variable"]
    )
    parser.add_argument("--trainer", choices=("rm", "dpo", "both"), default="both")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (median)")
    parser.add_argument(
        "--trl-optim",
        default=None,
        help="TRL optim (default: TRL's, adamw_torch_fused; adamw_torch = foreach AdamW as oodpl)",
    )
    parser.add_argument(
        "--oodpl-padded", action="store_true", help="add oodpl rows with packing='never'"
    )
    parser.add_argument("--quick", action="store_true", help="3 steps, short sequences")
    args = parser.parse_args()
    global TRL_OPTIM, OODPL_PADDED
    TRL_OPTIM, OODPL_PADDED = args.trl_optim, args.oodpl_padded
    if args.quick:
        args.steps = 3
        args.prompt_len, args.response_len = min(args.prompt_len, 32), min(args.response_len, 31)
        args.var_min, args.var_max = min(args.var_min, 8), min(args.var_max, 48)
    args.warmup = args.steps  # warm-up epoch, then the measured epoch (module docstring)
    trl = require_trl()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    spec = spec_from_args(args)
    print(hardware_line(spec.device))
    optim = args.trl_optim or "default (adamw_torch_fused)"
    print(
        f"TRL {trl.__version__} (optim {optim}); {spec.steps} warm-up + {spec.steps} measured "
        "steps per run\n"
    )
    header = ["case", *RESULT_HEADER[:6], "oodpl/TRL pairs/s", "oodpl/TRL memory", "notes"]
    rows: list[list[str]] = []
    for case in args.cases:
        case_spec = spec
        if case == "variable":
            case_spec = replace(spec, response_len=args.var_min, response_len_max=args.var_max)
        else:
            case_spec = replace(spec, response_len_max=None)
        print(f"case {case}: {case_spec.shape()}")
        rows += run_case(case_spec, case, args.trainer, args.repeats)
    print(f"\npeak memory: {memory_label(spec.device)} from before model build\n")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()

"""``oodpl eval {rm,dpo,policy}``: evaluate saved models per domain and write a run directory.

Each model (an oodpl checkpoint, a run directory — its ``checkpoints/final`` — or a local
``transformers`` directory) is evaluated on the evaluation data of the config (by default the
data section of the first model's own run) with :mod:`.evaluate`. A model that comes from a run
directory is in-distribution on the domains that run trained on and out-of-distribution on the
others, so several models trained on different domains give the ID/OOD accuracy matrix (rows:
trained on, columns: evaluated on). ``generate`` also samples responses at ``eval.temperatures``
× ``eval.repetitions`` and scores them with the gold reward (synthetic data) or a reward model.

DPO evaluation needs the reference policy ``π_ref`` of the implicit reward: ``reference`` or,
for models trained by ``oodpl train dpo``, the one recorded in ``checkpoints/reference.json``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from oodpl.cli.config.schema import RunConfig
from oodpl.cli.errors import BadInputError
from oodpl.cli.pipelines import build as B
from oodpl.cli.pipelines.evaluate import (
    Evaluation,
    evaluate_policy,
    evaluate_reward_model,
    gold_scorer,
    reference_pair_logps,
    reward_model_scorer,
    score_generations,
)
from oodpl.cli.pipelines.sections import domains_label, write_evaluations, write_generation
from oodpl.cli.run_dir import CONFIG_FILE, RunDir

TARGETS = ("rm", "dpo", "policy")
DEFAULT_KIND = {"rm": "rm", "dpo": "dpo", "policy": "sft"}


@dataclasses.dataclass
class EvalOptions:
    """Command-line options of ``oodpl eval``."""

    reference: str | None = None
    beta: float | None = None
    generate: bool = False
    reward_model: str | None = None


@dataclasses.dataclass
class ModelSpec:
    """A model to evaluate: its path, report label and the run config it came from (if any)."""

    path: str
    resolved: Path
    label: str
    run_config: RunConfig | None


def run_config_of(resolved: Path) -> RunConfig | None:
    """The config.yaml of the run a checkpoint belongs to (``<run>/checkpoints/<name>``)."""
    from oodpl.cli.config.loader import load_config

    run = resolved.parent.parent
    if resolved.parent.name == "checkpoints" and (run / CONFIG_FILE).is_file():
        return load_config(run / CONFIG_FILE)
    return None


def check_kind(target: str, resolved: Path, path: str) -> None:
    """An oodpl checkpoint must hold the model kind ``target`` evaluates."""
    if not B.is_oodpl_checkpoint(resolved):
        return
    kind = json.loads((resolved / B.CHECKPOINT_CONFIG).read_text()).get("kind")
    wanted = "reward_model" if target == "rm" else "policy"
    if kind != wanted:
        other = "rm" if kind == "reward_model" else "policy"
        raise BadInputError(
            f"model {path} holds a {kind}, not a {wanted}: use 'oodpl eval {other}'"
        )


def model_specs(paths: Sequence[str], target: str = "rm") -> list[ModelSpec]:
    """Resolve ``paths`` (checked to exist and to hold ``target``'s kind) with unique labels."""
    if not paths:
        raise BadInputError("name at least one model (checkpoint or run directory) to evaluate")
    specs: list[ModelSpec] = []
    seen: dict[str, int] = {}
    for path in paths:
        resolved = B.resolve_model_path(path, "model")
        check_kind(target, resolved, path)
        config = run_config_of(resolved)
        label = config.name if config is not None and config.name else resolved.name
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} ({seen[label]})"
        specs.append(ModelSpec(path, resolved, label, config))
    return specs


def resolve_eval_config(
    target: str, config_file: Path | None, overrides: Sequence[str], specs: Sequence[ModelSpec]
) -> RunConfig:
    """The config of an evaluation: ``--config``, else the first model's run config, else the
    defaults; ``--set`` overrides on top. ``kind`` only names the run directory's config."""
    from oodpl.cli.config.loader import config_from_dict, load_config
    from oodpl.cli.config.schema import to_dict

    if config_file is not None:
        try:
            return load_config(config_file, overrides)
        except BadInputError as exc:
            if "missing required key 'kind'" not in str(exc):
                raise
            return load_config(config_file, [f"kind={DEFAULT_KIND[target]}", *overrides])
    base = specs[0].run_config if specs else None
    if base is not None:
        data = to_dict(base)
        data.update(name=None, notes="")
        return config_from_dict(data, source=str(specs[0].resolved), overrides=overrides)
    return config_from_dict({"kind": DEFAULT_KIND[target]}, source="--set", overrides=overrides)


def _domains_for(spec: ModelSpec, data: B.RunData) -> B.RunData:
    """``data`` with ID = the domains the model's run trained on (when known)."""
    if spec.run_config is None:
        return data
    trained, _ = B.split_domains(spec.run_config.data, data.domains)
    train = tuple(d for d in data.domains if d in trained)
    if not train:
        return dataclasses.replace(data, train_domains=(), test_domains=data.domains)
    return dataclasses.replace(
        data, train_domains=train, test_domains=tuple(d for d in data.domains if d not in train)
    )


def reference_path(spec: ModelSpec, options: EvalOptions) -> str:
    """The DPO reference of ``spec``: ``--reference`` or the one its run recorded."""
    if options.reference is not None:
        return options.reference
    record = spec.resolved.parent / "reference.json"
    if record.is_file():
        return str(json.loads(record.read_text())["reference"])
    raise BadInputError(
        f"--reference: the DPO reference policy of {spec.path} is unknown (no "
        f"{record}); pass --reference PATH"
    )


def evaluate_model(
    target: str, spec: ModelSpec, config: RunConfig, data: B.RunData, options: EvalOptions
) -> tuple[Evaluation, Any]:
    """Evaluate one model; returns (evaluation, the loaded policy or ``None``)."""
    data = _domains_for(spec, data)
    batch = config.train.eval_batch_size
    if target == "rm":
        model = B.load_reward_model(config, spec.path, "model")
        evaluation = evaluate_reward_model(
            model, data, config.eval, label=spec.label, batch_size=batch
        )
        return evaluation, None
    reference_source = reference_path(spec, options) if target == "dpo" else None
    policy = B.load_policy(config, spec.path, "model")
    policy.eval()
    if target == "policy":
        evaluation = evaluate_policy(policy, data, config.eval, label=spec.label, batch_size=batch)
        return evaluation, policy
    assert reference_source is not None
    reference = B.load_policy(config, reference_source, "--reference")
    beta = options.beta
    if beta is None:
        beta = (spec.run_config or config).train.dpo.beta
    references = reference_pair_logps(reference, data, config.eval, batch_size=batch)
    evaluation = evaluate_policy(
        policy,
        data,
        config.eval,
        label=spec.label,
        batch_size=batch,
        reference_logps=references,
        beta=beta,
    )
    return evaluation, policy


def _scorer(config: RunConfig, data: B.RunData, options: EvalOptions) -> tuple[Any, str, str]:
    if options.reward_model is not None:
        model = B.load_reward_model(config, options.reward_model, "--reward-model")
        return reward_model_scorer(model, config.train.eval_batch_size), "mean_reward", "RM"
    if data.gold is None:
        raise BadInputError(
            f"--generate: data source {data.source!r} has no gold reward; pass --reward-model"
        )
    return gold_scorer(data.gold), "gold_reward", "gold reward"


def run_evaluation(
    target: str,
    paths: Sequence[str],
    config_file: Path | None,
    overrides: Sequence[str],
    options: EvalOptions,
    *,
    run_dir: Path | None = None,
    output_dir: Path | None = None,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
) -> tuple[Path, list[Evaluation]]:
    """Evaluate ``paths`` as ``target`` models and write the run directory; see the module."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if options.generate and target == "rm":
        raise BadInputError("--generate samples from a policy: use 'oodpl eval policy' or 'dpo'")
    specs = model_specs(paths, target)
    if target == "dpo":
        for spec in specs:  # fail on a missing reference before anything is loaded
            B.resolve_model_path(reference_path(spec, options), "--reference")
    config = resolve_eval_config(target, config_file, overrides, specs)
    if run_dir is not None:
        config = dataclasses.replace(config, output_dir=str(run_dir.parent), name=run_dir.name)
    else:
        name = RunDir.default_name(f"eval-{target}")
        parent = str(output_dir) if output_dir is not None else config.output_dir
        config = dataclasses.replace(config, output_dir=parent, name=name)
    data = B.build_data(config)
    data.require("eval_preference", data.domains, purpose=f"oodpl eval {target}")
    scorer = _scorer(config, data, options) if options.generate else None
    run = RunDir.start(config, overwrite=overwrite, command=command)
    evaluations, generation = [], {}
    for index, spec in enumerate(specs):
        evaluation, policy = evaluate_model(target, spec, config, data, options)
        evaluations.append(evaluation)
        run.log_metrics(index, evaluation.flat(), phase="eval")
        if scorer is not None and policy is not None:
            prompts = {
                d: list(dict.fromkeys(r.prompt for r in data.eval_reference.get(d, [])))
                for d in data.domains
            }
            prompts = {d: p for d, p in prompts.items() if p}
            generation[spec.label] = score_generations(
                policy, prompts, scorer[0], config.eval, seed=config.seed
            )
    rows, names = [], set()
    for spec, evaluation in zip(specs, evaluations, strict=True):
        name = domains_label(evaluation.train_domains) if spec.run_config else spec.label
        if name in names:
            name = f"{name} ({spec.label})"
        names.add(name)
        rows.append((name, evaluation))
    write_evaluations(
        run,
        evaluations,
        matrix_rows=rows,
        n_bins=config.eval.n_bins,
        binning=config.eval.binning,
        calibrate=evaluations,
    )
    if generation:
        write_generation(run, generation, metric=scorer[1], scorer_name=scorer[2])
    from oodpl.cli.pipelines.evaluate import METRIC_MEANINGS

    run.describe_metrics(METRIC_MEANINGS)
    run.build_report()
    return run.path, evaluations


__all__ = ["TARGETS", "EvalOptions", "ModelSpec", "model_specs", "run_evaluation"]

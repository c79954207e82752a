"""``oodpl eval {rm,dpo,policy} MODEL...``: per-domain evaluation of saved models.

Reports accuracy (EXRM), DPORM accuracy, PL accuracy, ECE/ACE/MCE, reward-difference outliers,
per domain and as an ID/OOD matrix; ``--generate`` scores sampled generations with the gold
reward (synthetic benchmark) or a reward model at ``eval.temperatures`` × ``eval.repetitions``.
Writes a run directory with results and report (see :mod:`oodpl.cli.pipelines.eval_run`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

SET_HELP = "Override a config value, e.g. --set eval.n_bins=20 (repeatable)."


def _common(function):  # type: ignore[no-untyped-def]
    """The options every ``oodpl eval`` subcommand takes."""
    options = [
        click.argument("models", nargs=-1, required=True, metavar="MODEL..."),
        click.option(
            "--config",
            "-c",
            "config_file",
            type=click.Path(path_type=Path),
            help="Config for data and eval settings (default: the first model's run config).",
        ),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP),
        click.option(
            "--output-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="Parent directory of the evaluation's run directory.",
        ),
        click.option(
            "--run-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="The exact run directory to write.",
        ),
        click.option("--overwrite", is_flag=True, help="Replace an existing run directory."),
        click.option("--debug", is_flag=True, help="Print full tracebacks on errors."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _generation(function):  # type: ignore[no-untyped-def]
    options = [
        click.option(
            "--generate",
            is_flag=True,
            help="Also sample responses to the evaluation prompts at eval.temperatures and "
            "score them (gold reward, or --reward-model).",
        ),
        click.option(
            "--reward-model",
            type=click.Path(path_type=Path),
            help="Score generations with this reward model instead of the gold reward.",
        ),
        click.option(
            "--temperatures",
            metavar="T1,T2,...",
            help="Sampling temperatures (sets eval.temperatures).",
        ),
        click.option(
            "--repetitions", type=int, help="Repetitions per temperature (eval.repetitions)."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run(target: str, models: tuple[str, ...], options: dict) -> None:
    from oodpl.cli.errors import BadInputError
    from oodpl.cli.pipelines.eval_run import EvalOptions, run_evaluation
    from oodpl.cli.progress import print_table, summary_table

    if options.get("output_dir") is not None and options.get("run_dir") is not None:
        raise BadInputError("pass either --output-dir or --run-dir, not both")
    overrides = list(options["overrides"])
    if options.get("temperatures"):
        overrides.append(f"eval.temperatures={options['temperatures']}")
    if options.get("repetitions") is not None:
        overrides.append(f"eval.repetitions={options['repetitions']}")
    reward_model = options.get("reward_model")
    if reward_model is not None and not options.get("generate"):
        raise BadInputError("--reward-model scores generations: add --generate")
    eval_options = EvalOptions(
        reference=str(options["reference"]) if options.get("reference") else None,
        beta=options.get("beta"),
        generate=bool(options.get("generate")),
        reward_model=str(reward_model) if reward_model is not None else None,
    )
    path, evaluations = run_evaluation(
        target,
        list(models),
        options["config_file"],
        overrides,
        eval_options,
        run_dir=options.get("run_dir"),
        output_dir=options.get("output_dir"),
        overwrite=options["overwrite"],
        command=sys.argv,
    )
    rows = [
        [e.label, e.headline, e.mean(e.headline, "id"), e.mean(e.headline, "ood")]
        for e in evaluations
    ]
    print_table(summary_table(f"oodpl eval {target}", ["model", "metric", "ID", "OOD"], rows))
    click.echo(f"run directory: {path}")
    click.echo(f"report: {path / 'report.html'}")


@click.group("eval")
def eval_group() -> None:
    """Evaluate reward models, DPO policies or policies per domain.

    MODEL is an oodpl checkpoint, a run directory (its final checkpoint) or a local
    transformers directory. Several models trained on different domains give the ID/OOD matrix.
    """


@eval_group.command("rm")
@_common
def eval_rm(models: tuple[str, ...], **options: object) -> None:
    """Reward models: accuracy, BT loss, ECE/ACE/MCE, reward-difference outliers per domain."""
    _run("rm", models, options)


@eval_group.command("dpo")
@_common
@_generation
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="The DPO reference policy (default: the one recorded by 'oodpl train dpo').",
)
@click.option("--beta", type=float, help="β of the implicit reward (default: the run's).")
def eval_dpo(models: tuple[str, ...], **options: object) -> None:
    """DPO policies: DPORM accuracy (implicit reward), DPO loss, PL accuracy, calibration."""
    _run("dpo", models, options)


@eval_group.command("policy")
@_common
@_generation
def eval_policy(models: tuple[str, ...], **options: object) -> None:
    """Policies: PL accuracy, PL loss, NLL, calibration of ℓ̄; --generate for gold reward."""
    _run("policy", models, options)


eval = eval_group  # the attribute named in oodpl.cli.commands.COMMANDS

"""The ``oodpl`` subcommands, one module per command group, loaded lazily.

:data:`COMMANDS` maps each command name to its module, attribute and one-line help, so
``oodpl --help`` lists commands without importing them (no torch or matplotlib import just to
print help). A command with an ``available`` check is listed only when the check passes (e.g.
``data`` needs ``oodpl.data.registry``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class CommandEntry:
    """Where a command lives and its one-line help."""

    module: str
    attribute: str
    short_help: str
    available: Callable[[], bool] | None = None

    def is_available(self) -> bool:
        return self.available is None or self.available()

    def load(self):  # -> click.Command
        return getattr(importlib.import_module(self.module), self.attribute)


COMMANDS: dict[str, CommandEntry] = {
    "config": CommandEntry(
        "oodpl.cli.commands.config",
        "config",
        "Check a run config, print it resolved, or list every config key.",
    ),
    "data": CommandEntry(
        "oodpl.cli.commands.data",
        "data",
        "List data sources, inspect one, preview a split protocol.",
        available=lambda: _module_exists("oodpl.data.registry"),
    ),
    "label": CommandEntry(
        "oodpl.cli.commands.label",
        "label",
        "LLM labelling: CSG pairs, win-rate judging (cached, resumable).",
        available=lambda: _module_exists("oodpl.data.labelling"),
    ),
    "env": CommandEntry(
        "oodpl.cli.commands.env",
        "env",
        "Print versions and device information (for bug reports).",
    ),
    "report": CommandEntry(
        "oodpl.cli.commands.report",
        "report",
        "Rebuild report.md and report.html of a run directory.",
    ),
    "quickstart": CommandEntry(
        "oodpl.cli.commands.quickstart",
        "quickstart",
        "Run the three papers' core experiments offline, with a report.",
    ),
    "study": CommandEntry(
        "oodpl.cli.commands.study",
        "study",
        "Multi-seed studies: EXRM vs DPORM in and out of distribution.",
    ),
    "iterate": CommandEntry(
        "oodpl.cli.commands.iterate",
        "iterate",
        "Iterative DPO with an EXRM or DPORM labeller.",
    ),
    "train": CommandEntry(
        "oodpl.cli.commands.train",
        "train",
        "Train sft/rm/dpo/hpl/ppo/meta/meta-test/rjs; evaluate; report.",
    ),
    "eval": CommandEntry(
        "oodpl.cli.commands.eval",
        "eval",
        "Evaluate RMs and policies per domain (ID/OOD matrix, ECE).",
    ),
}

"""Config sections of the experiment kinds: ``quickstart``, ``study`` and ``iterate``.

These kinds run several trainers in a row (SFT, reward models, DPO, ...) inside one run
directory, so their stage lengths and learning rates live in their own section instead of the
single-trainer ``train.lr`` / ``train.max_steps``. They still read ``train.batch_size``,
``train.dpo`` (β, loss type), ``train.rm.margin``, ``model``, ``data``, ``engine`` and ``eval``.
Defaults are sized for the tiny presets on a CPU (minutes, not hours).

- ``study`` ([DPORM], METHODS §4): EXRM versus the DPO implicit reward (DPORM), in and out of
  distribution, over several seeds.
- ``iterate`` ([DPORM] Alg. 1, METHODS §4): iterative DPO with an EXRM or DPORM labeller.
- ``quickstart``: the three papers' core experiments on the synthetic benchmark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Literal

from oodpl.cli.config.fields import doc

Problems = list[tuple[str, str]]
Labeller = Literal["exrm", "dporm"]
QuickstartExperiment = Literal["oodpl", "dporm", "more"]


@dataclasses.dataclass
class StageSchedule:
    """Steps and learning rates of the stages every experiment kind runs (METHODS §1-2)."""

    sft_steps: int = field(
        default=300, metadata=doc("SFT steps of the shared starting policy π", ge=1)
    )
    sft_lr: float = field(default=0.003, metadata=doc("SFT learning rate", gt=0))
    reward_steps: int = field(
        default=150, metadata=doc("steps of each explicit reward model (EXRM, BT loss)", ge=1)
    )
    reward_lr: float = field(default=0.001, metadata=doc("reward-model learning rate", gt=0))
    dpo_steps: int = field(
        default=150, metadata=doc("steps of each DPO policy trained on the preference data", ge=1)
    )
    dpo_lr: float = field(default=0.001, metadata=doc("DPO learning rate", gt=0))


@dataclasses.dataclass
class StudyConfig(StageSchedule):
    """``oodpl study``: EXRM versus DPORM generalisation ([DPORM], METHODS §4)."""

    experiment: Literal["dporm"] = field(
        default="dporm", metadata=doc("the study to run: dporm (EXRM vs DPORM, METHODS §4)")
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata=doc("seeds; every setting runs once per seed (mean ± std reported)", ge=0),
    )
    settings: list[str] = field(
        default_factory=list,
        metadata=doc("training domains, one setting each (OOD = the others); empty = all"),
    )

    def problems(self) -> Problems:
        out: Problems = []
        if not self.seeds:
            out.append(("seeds", "needs at least one seed"))
        if len(set(self.seeds)) != len(self.seeds):
            out.append(("seeds", "seeds are listed more than once"))
        if len(set(self.settings)) != len(self.settings):
            out.append(("settings", "settings are listed more than once"))
        return out


@dataclasses.dataclass
class IterateConfig(StageSchedule):
    """``oodpl iterate``: iterative DPO labelled by EXRM or DPORM ([DPORM] Alg. 1, METHODS §4)."""

    iterations: int = field(default=3, metadata=doc("iterations T after π_0 = DPO(π, D)", ge=1))
    samples_per_prompt: int = field(
        default=8, metadata=doc("responses K sampled per prompt from π_{t-1}", ge=2)
    )
    labellers: list[Labeller] = field(
        default_factory=lambda: ["exrm", "dporm"],
        metadata=doc("rewards that label the samples (each runs its own chain): exrm, dporm"),
    )
    prompts_per_iteration: int = field(
        default=64, metadata=doc("training prompts sampled per iteration", ge=1)
    )
    sample_temperature: float = field(
        default=1.0, metadata=doc("temperature of the K samples per prompt", gt=0)
    )
    iteration_dpo_steps: int = field(
        default=60, metadata=doc("DPO steps of each iteration's policy π_t", ge=1)
    )
    eval_prompts: int = field(
        default=32, metadata=doc("evaluation prompts per domain scored by the gold reward", ge=1)
    )

    def problems(self) -> Problems:
        if not self.labellers:
            return [("labellers", "needs at least one labeller (exrm, dporm)")]
        if len(set(self.labellers)) != len(self.labellers):
            return [("labellers", "labellers are listed more than once")]
        return []


@dataclasses.dataclass
class QuickstartConfig:
    """``oodpl quickstart``: what the run covered (written to config.yaml for the record)."""

    experiments: list[QuickstartExperiment] = field(
        default_factory=lambda: ["oodpl", "dporm", "more"],
        metadata=doc("experiments to run: oodpl (a), dporm (b), more (c)"),
    )
    full: bool = field(
        default=False, metadata=doc("experiment (a) holds out every domain in turn, not just one")
    )
    fast: bool = field(default=False, metadata=doc("tiny sizes and steps (tests, smoke runs)"))

    def problems(self) -> Problems:
        if not self.experiments:
            return [("experiments", "needs at least one experiment (oodpl, dporm, more)")]
        if len(set(self.experiments)) != len(self.experiments):
            return [("experiments", "experiments are listed more than once")]
        return []


__all__ = ["IterateConfig", "QuickstartConfig", "StageSchedule", "StudyConfig"]

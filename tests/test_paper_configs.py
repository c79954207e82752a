"""The example configs of each paper's experiment (configs/paper/) validate against the run-config
schema and state what the papers fix: models, data sources and protocols, hyper-parameters.

Every file is loaded with ``oodpl.cli.config.load_config`` (unknown keys, types, bounds and
cross-field rules); the data sources and domains it names must exist in ``oodpl.data.registry``;
a broken copy of a file must fail naming the file, line and key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from oodpl.cli.config import load_config
from oodpl.cli.errors import ConfigError
from oodpl.data.registry import get_source

PAPER_DIR = Path(__file__).resolve().parents[1] / "configs" / "paper"
CONFIGS = sorted(PAPER_DIR.glob("*/*.yaml"))
DPORM_SETTINGS = {"Ia": "I(a)", "Ib": "I(b)", "Ic": "I(c)", "IIa": "II(a)", "IIb": "II(b)"}
SHP_GROUP_1 = ["askacademia", "askanthropology", "askbaking"]


def config_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_every_paper_has_its_configs() -> None:
    names = {config_id(p) for p in CONFIGS}
    expected = {
        f"oodpl/{d}-{step}.yaml" for d in ("csg", "shp") for step in ("sft", "meta", "meta-test")
    }
    expected |= {f"dporm/{kind}-{key}.yaml" for kind in ("dpo", "rm") for key in DPORM_SETTINGS}
    expected |= {f"more/{n}.yaml" for n in ("more-pythia-1.4b-zero2", "more-pythia-1.4b-zero3",
                                            "multitask-pythia-1.4b")}  # fmt: skip
    assert names == expected
    assert (PAPER_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", CONFIGS, ids=config_id)
def test_config_validates_and_names_real_sources(path: Path) -> None:
    config = load_config(path)
    text = path.read_text(encoding="utf-8")
    assert config.name and config.name.startswith("paper-")
    assert config.model.preset is None and config.model.path, "paper configs use real checkpoints"
    assert config.model.trust_remote_code is False
    assert "Data" in text and "data/" in text, "the header must say where the data goes"
    sources = [(config.data.source, config.data.domains)]
    sources += [(extra.source, extra.domains) for extra in config.data.extra_sources]
    for name, domains in sources:
        spec = get_source(name)
        assert spec.name != "synthetic"
        assert set(domains) <= set(spec.domains) or spec.open_domains, (name, domains)
    for extra in config.data.extra_sources:
        assert extra.path and extra.path.startswith("data/")
    assert config.data.path and config.data.path.startswith("data/")
    assert config.name in text  # the file names its own run


@pytest.mark.parametrize("step", ["sft", "meta", "meta-test"])
@pytest.mark.parametrize("task", ["csg", "shp"])
def test_oodpl_configs_use_flan_t5_and_the_paper_protocols(task: str, step: str) -> None:
    config = load_config(PAPER_DIR / "oodpl" / f"{task}-{step}.yaml")
    assert config.kind == step
    assert config.model.path == "google/flan-t5-large"
    assert config.model.lora.enabled
    if task == "csg":
        assert config.data.protocol == "leave-one-domain-out"
        assert config.data.domains == ["books", "dvd", "electronics", "kitchen"]
        assert len(config.data.held_out) == 1
    else:
        assert config.data.source == "shp" and config.data.protocol == "shp-group-folds"
        assert config.data.held_out == SHP_GROUP_1
    sizes = config.data.sizes
    assert (sizes.fine_tuning, sizes.preference_train) == (1000, 500)
    assert (sizes.eval_reference, sizes.eval_preference) == (500, 500)
    if step == "meta":
        assert config.train.init_from and "sft" in config.train.init_from
        assert config.train.meta.inner_steps >= 1
        if config.train.meta.hypergradient in ("unrolled", "truncated", "implicit"):
            assert config.model.attn_implementation == "eager"  # METHODS §3: exact HVPs
    if step == "meta-test":
        assert config.train.meta.reward_model and "meta" in config.train.meta.reward_model


@pytest.mark.parametrize("key", sorted(DPORM_SETTINGS))
@pytest.mark.parametrize("kind", ["dpo", "rm"])
def test_dporm_configs_follow_the_paper(kind: str, key: str) -> None:
    path = PAPER_DIR / "dporm" / f"{kind}-{key}.yaml"
    config = load_config(path)
    assert config.kind == kind
    assert config.model.path == "google/gemma-2b"
    assert config.data.protocol == "dporm-settings"
    assert config.data.setting == DPORM_SETTINGS[key]
    if kind == "dpo":
        assert config.train.dpo.beta == 0.03
        assert (config.train.lr, config.train.epochs) == (1e-6, 2.0)
    else:
        assert (config.train.lr, config.train.epochs) == (5e-6, 1.0)
    assert re.search(r"for s in 0 1 2", path.read_text(encoding="utf-8")), "3 seeds"
    sources = {config.data.source, *(e.source for e in config.data.extra_sources)}
    if key.startswith("I") and not key.startswith("II"):
        assert sources == {"ultrafeedback", "chatbot-arena", "hh-rlhf", "nectar", "webgpt",
                           "summarize"}  # fmt: skip
    elif key == "IIa":
        assert sources == {"ultrafeedback"}
        assert config.data.extra_sources[0].options == ["domain=ultrafeedback-regenerated"]
    else:
        assert sources == {"summarize"} and config.data.split == "all"


@pytest.mark.parametrize("name", ["more-pythia-1.4b-zero2", "more-pythia-1.4b-zero3",
                                  "multitask-pythia-1.4b"])  # fmt: skip
def test_more_configs_use_five_sources_of_sixteen(name: str) -> None:
    config = load_config(PAPER_DIR / "more" / f"{name}.yaml")
    assert config.kind == "rm" and config.model.path == "EleutherAI/pythia-1.4b"
    rm = config.train.rm
    assert rm.group_by == "domain"
    groups = list(config.data.domains)
    for extra in config.data.extra_sources:
        groups += extra.domains or list(get_source(extra.source).domains)
    assert len(groups) == len(set(groups)) == 5, groups
    assert rm.items_per_source == 16 and config.train.batch_size == 5 * 16
    assert config.engine.backend == "deepspeed"
    if name.startswith("more"):
        assert rm.source_weighting == "more" and rm.momentum == 0.99
    else:
        assert rm.source_weighting == "size"
    stage = 3 if name.endswith("zero3") else 2
    assert config.engine.zero_stage == stage
    assert config.engine.offload_params == (stage == 3)


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("  protocol: dporm-settings\n", "  protocol: leave-one-domain-out\n", "data.setting"),
        ("setting: I(a)", "setting: I(d)", "data.setting"),
        ("  dpo: {beta: 0.03", "  dpo: {beta: -0.03", "train.dpo.beta"),
        ("    - {source: nectar,", "    - {sourse: nectar,", "data.extra_sources[2].sourse"),
    ],
)
def test_a_broken_copy_fails_naming_the_key(tmp_path: Path, old: str, new: str, fragment: str):
    text = (PAPER_DIR / "dporm" / "dpo-Ia.yaml").read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(broken)
    assert str(broken) in str(info.value) and fragment in str(info.value)

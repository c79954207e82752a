"""The source registry: names, aliases, argument checks, the hub path (never reached in tests)."""

from __future__ import annotations

import datasets
import pytest

from oodpl.data import registry
from oodpl.data.errors import UnknownDomainError, UnknownSourceError
from oodpl.data.registry import get_source, list_sources, load, register_source, source_info
from oodpl.data.sources._common import SourceSpec

EXPECTED = {
    "amazon",
    "csg-pairs",
    "shp",
    "hh-rlhf",
    "oasst1",
    "webgpt",
    "summarize",
    "ultrafeedback",
    "chatbot-arena",
    "nectar",
    "trl",
    "synthetic",
}


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Fail loudly if anything would reach the hub."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"datasets.load_dataset called with {args} {kwargs}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


def test_every_source_is_listed_with_its_metadata():
    sources = list_sources()
    assert {s.name for s in sources} == EXPECTED
    assert [s.name for s in sources] == sorted(s.name for s in sources)
    for spec in sources:
        info = source_info(spec)
        assert info["description"] and info["path_hint"]
        assert info["record_type"] in ("preference", "completion", "preference or completion")
        assert spec.open_domains or info["domains"]
        assert spec.default_split is None or spec.default_split in spec.splits
    hubs = {s.name: s.hub_id for s in sources}
    assert hubs["shp"] == "stanfordnlp/SHP" and hubs["hh-rlhf"] == "Anthropic/hh-rlhf"
    assert hubs["amazon"] is None


@pytest.mark.parametrize(
    ("alias", "name"),
    [("HH", "hh-rlhf"), ("arena", "chatbot-arena"), ("csg", "csg-pairs"), (" SHP ", "shp")],
)
def test_aliases(alias, name):
    assert get_source(alias).name == name


def test_unknown_source_lists_known_ones():
    with pytest.raises(UnknownSourceError) as info:
        get_source("imdb")
    assert isinstance(info.value, ValueError) and "shp" in str(info.value)


def test_unknown_domain_names_the_argument(fixtures):
    with pytest.raises(UnknownDomainError) as info:
        load("shp", fixtures / "shp", domains=["askculinary", "askcooking"])
    assert info.value.unknown == ("askcooking",)
    assert str(info.value).startswith("domains:")
    with pytest.raises(TypeError, match="domains"):
        load("shp", fixtures / "shp", domains="askculinary")
    with pytest.raises(ValueError, match="domains"):
        load("shp", fixtures / "shp", domains=[])


def test_split_checks(fixtures):
    with pytest.raises(ValueError, match="split: 'dev'"):
        load("shp", fixtures / "shp", split="dev")
    with pytest.raises(ValueError, match="no splits"):
        load("csg-pairs", fixtures / "csg_pairs", split="train")
    assert get_source("ultrafeedback").split_aliases["train"] == "train_prefs"


def test_unknown_option_is_a_type_error(fixtures):
    with pytest.raises(TypeError, match="min_ratio: unknown option for source 'shp'"):
        load("shp", fixtures / "shp", min_ratio=2)


def test_path_required_unless_hub_requested():
    with pytest.raises(ValueError, match="path: required for source 'shp'"):
        load("shp")
    with pytest.raises(ValueError, match="no hub dataset"):
        load("amazon", use_hub=True)


def test_path_and_hub_together_is_an_error(fixtures):
    with pytest.raises(ValueError, match="use_hub"):
        load("shp", fixtures / "shp", use_hub=True)


def test_hub_path_uses_load_dataset_with_the_hub_id(monkeypatch, jsonl_rows, fixtures):
    rows = jsonl_rows(fixtures / "shp" / "askdocs" / "train.json")
    calls = []

    def fake_load_dataset(hub_id, **kwargs):
        calls.append((hub_id, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    result = load("shp", domains=["askdocs"], use_hub=True, split="train")
    assert calls == [("stanfordnlp/SHP", {"data_dir": "askdocs", "split": "train"})]
    assert [r.domain for r in result] == ["askdocs", "askdocs"]
    assert result.summary.files == ["hf://stanfordnlp/SHP data_dir=askdocs split=train"]


def test_trl_source_accepts_any_domain(tmp_path, raw_lines):
    path = raw_lines(
        tmp_path / "mine.jsonl",
        [
            '{"prompt": "p", "chosen": "a", "rejected": "b", "domain": "law"}',
            '{"prompt": "q", "chosen": "c", "rejected": "d"}',
        ],
    )
    result = load("trl", path, domain="default-domain")
    assert [r.domain for r in result] == ["law", "default-domain"]
    only_law = load("trl", path, domain="default-domain", domains=["law"])
    assert len(only_law) == 1 and only_law.summary.filtered == {"other_domain": 1}


def test_register_custom_source(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))

    def rows(path, collector, *, domains, split, **_):
        return []

    def process(rows, collector, *, split=None):
        collector.add_preference(
            None, prompt="p", chosen="a", rejected="b", domain="x", source="toy"
        )

    spec = SourceSpec(
        name="toy",
        description="d",
        domains=("x",),
        record_type="preference",
        path_hint="anything",
        hub_id=None,
        splits=(),
        default_split=None,
        rows=rows,
        process=process,
    )
    register_source(spec)
    assert [r.source for r in load("toy", tmp_path)] == ["toy"]
    with pytest.raises(ValueError, match="already registered"):
        register_source(spec)
    with pytest.raises(TypeError, match="spec"):
        register_source("toy")  # type: ignore[arg-type]

"""Tests for oodpl.core.records (Preference, Completion)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oodpl.core.records import Completion, Preference

text = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() != "")
meta_values = st.dictionaries(
    st.text(max_size=8), st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
)


def make_preference(**overrides: object) -> Preference:
    fields: dict[str, object] = {
        "prompt": "What is 2 + 2?",
        "chosen": "4",
        "rejected": "5",
        "domain": "math",
    }
    fields.update(overrides)
    return Preference(**fields)  # type: ignore[arg-type]


def make_completion(**overrides: object) -> Completion:
    fields: dict[str, object] = {"prompt": "Say hi", "response": "hi", "domain": "chat"}
    fields.update(overrides)
    return Completion(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Preference


def test_preference_defaults_and_conversions() -> None:
    record = make_preference()
    assert record.source == ""
    assert record.meta == {}
    assert record.to_trl() == {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}
    assert record.to_dict() == {
        "prompt": "What is 2 + 2?",
        "chosen": "4",
        "rejected": "5",
        "domain": "math",
        "source": "",
        "meta": {},
    }


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected", "domain"])
@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_preference_blank_text_is_rejected_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"Preference\.{field}"):
        make_preference(**{field: value})


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected", "domain", "source"])
@pytest.mark.parametrize("value", [None, 3, b"bytes", ["x"]])
def test_preference_non_string_is_a_type_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"Preference\.{field}"):
        make_preference(**{field: value})


def test_preference_identical_responses_are_rejected() -> None:
    with pytest.raises(ValueError, match="chosen"):
        make_preference(chosen="same", rejected="same")


def test_preference_meta_is_copied_and_validated() -> None:
    original = {"score": 1.0}
    record = make_preference(meta=original)
    original["score"] = 2.0
    assert record.meta == {"score": 1.0}
    exported = record.to_dict()
    exported["meta"]["score"] = 3.0
    assert record.meta == {"score": 1.0}
    assert make_preference(meta=None).meta == {}
    with pytest.raises(TypeError, match=r"Preference\.meta"):
        make_preference(meta=[("score", 1.0)])


def test_preference_is_frozen_hashable_and_compared_by_value() -> None:
    record = make_preference(meta={"id": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.prompt = "changed"  # type: ignore[misc]
    twin = make_preference(meta={"id": 1})
    assert record == twin
    assert hash(record) == hash(twin)
    assert len({record, twin}) == 1
    assert record != make_preference(meta={"id": 2})
    assert record != make_preference(domain="code", meta={"id": 1})


@settings(max_examples=50, deadline=None)
@given(
    prompt=text,
    chosen=text,
    rejected=text,
    domain=text,
    source=st.text(max_size=10),
    meta=meta_values,
)
def test_preference_round_trips_through_to_dict(
    prompt: str, chosen: str, rejected: str, domain: str, source: str, meta: dict
) -> None:
    if chosen == rejected:
        with pytest.raises(ValueError):
            Preference(prompt, chosen, rejected, domain, source, meta)
        return
    record = Preference(prompt, chosen, rejected, domain, source, meta)
    assert Preference(**record.to_dict()) == record
    trl = record.to_trl()
    assert (trl["prompt"], trl["chosen"], trl["rejected"]) == (prompt, chosen, rejected)


# --------------------------------------------------------------------------- Completion


def test_completion_defaults_and_to_dict() -> None:
    record = make_completion(source="synthetic", meta={"k": "v"})
    assert record.to_dict() == {
        "prompt": "Say hi",
        "response": "hi",
        "domain": "chat",
        "source": "synthetic",
        "meta": {"k": "v"},
    }


@pytest.mark.parametrize("field", ["prompt", "response", "domain"])
def test_completion_blank_and_non_string_fields(field: str) -> None:
    with pytest.raises(ValueError, match=rf"Completion\.{field}"):
        make_completion(**{field: "  "})
    with pytest.raises(TypeError, match=rf"Completion\.{field}"):
        make_completion(**{field: 1})


def test_completion_source_and_meta_validation() -> None:
    with pytest.raises(TypeError, match=r"Completion\.source"):
        make_completion(source=None)
    with pytest.raises(TypeError, match=r"Completion\.meta"):
        make_completion(meta="not a mapping")
    original = {"a": 1}
    record = make_completion(meta=original)
    original["a"] = 2
    assert record.meta == {"a": 1}


def test_completion_is_frozen_and_hashable() -> None:
    record = make_completion()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.response = "changed"  # type: ignore[misc]
    assert hash(record) == hash(make_completion())


@settings(max_examples=50, deadline=None)
@given(prompt=text, response=text, domain=text, meta=meta_values)
def test_completion_round_trips_through_to_dict(
    prompt: str, response: str, domain: str, meta: dict
) -> None:
    record = Completion(prompt, response, domain, meta=meta)
    assert Completion(**record.to_dict()) == record

"""Byte-level BPE tokenizer trained locally; pad-token fallback."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from oodpl.core.records import Completion, Preference
from oodpl.models.errors import TokenizerError
from oodpl.models.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    record_texts,
    resolve_pad_token_id,
    train_bpe_tokenizer,
)


def test_special_tokens_and_lengths(tokenizer):
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == (
        PAD_TOKEN,
        BOS_TOKEN,
        EOS_TOKEN,
        UNK_TOKEN,
    )
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]
    assert tokenizer.model_max_length == 128
    assert 260 < len(tokenizer) <= 400
    # merges were learned: a frequent word is shorter than its byte count
    assert len(tokenizer("review", add_special_tokens=False)["input_ids"]) < len("review")


@settings(max_examples=40, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_byte_level_round_trip_any_unicode(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_training_is_deterministic():
    texts = ["alpha beta gamma", "beta gamma delta", "gamma delta alpha"] * 5
    a = train_bpe_tokenizer(texts, vocab_size=300)
    b = train_bpe_tokenizer(texts, vocab_size=300)
    assert a.get_vocab() == b.get_vocab()


def test_save_and_reload_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "review 3: the kettle was sturdy"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.pad_token_id == tokenizer.pad_token_id
    assert again.model_max_length == 128


def test_record_texts():
    texts = list(record_texts([Preference("p", "a", "b", "d"), Completion("q", "r", "d")]))
    assert texts == ["p", "a", "b", "q", "r"]
    with pytest.raises(TypeError, match=r"records\[0\]"):
        list(record_texts([{"prompt": "p"}]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 100}, "vocab_size"),
        ({"model_max_length": 1}, "model_max_length"),
        ({"min_frequency": 0}, "min_frequency"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_bpe_tokenizer(["some text"], **kwargs)


def test_bad_texts():
    with pytest.raises(ValueError, match="empty"):
        train_bpe_tokenizer(["", ""])
    with pytest.raises(TypeError, match="single str"):
        train_bpe_tokenizer("a string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_bpe_tokenizer(["ok", 3])


def test_missing_pad_token_policies():
    tok = train_bpe_tokenizer(["hello there world"] * 3, vocab_size=270)
    tok.pad_token = None
    assert tok.pad_token_id is None
    with pytest.warns(UserWarning, match="no pad token"):
        pad_id, fallback = resolve_pad_token_id(tok)
    assert (pad_id, fallback) == (tok.eos_token_id, True)
    assert tok.pad_token_id is None  # the tokenizer is not modified
    with pytest.raises(TokenizerError, match="no pad token"):
        resolve_pad_token_id(tok, missing_pad="error")
    tok.eos_token = None
    with pytest.raises(TokenizerError, match="neither a pad token nor an eos token"):
        resolve_pad_token_id(tok)
    with pytest.raises(ValueError, match="missing_pad"):
        resolve_pad_token_id(tok, missing_pad="bos")

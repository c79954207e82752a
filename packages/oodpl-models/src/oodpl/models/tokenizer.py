"""Byte-level BPE tokenizers trained locally, and pad-token handling.

The tiny presets need a tokenizer without touching the hub, so one is trained on the texts at hand
with ``tokenizers``' byte-level BPE (every byte is in the base alphabet, so nothing is ever unknown)
and wrapped as a ``transformers`` fast tokenizer with ``<pad>``, ``<s>`` (bos), ``</s>`` (eos) and
``<unk>`` set; it is saved next to every checkpoint (``tokenizer.json``).

Missing pad token (documented choice): many causal-LM tokenizers (GPT-NeoX, Llama) ship without
one. :func:`resolve_pad_token_id` then pads with the eos id and warns once per tokenizer
(``missing_pad="eos"``, the default) or raises :class:`~oodpl.models.errors.TokenizerError`
(``missing_pad="error"``). Padding with eos is safe here because oodpl's masks are built from
sequence lengths, never by comparing token ids with the pad id. The tokenizer is not modified.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Iterator
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from oodpl.core.records import Completion, Preference
from oodpl.models.errors import TokenizerError

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
BYTE_ALPHABET_SIZE = 256

MissingPad = Literal["eos", "error"]


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    model_max_length: int = 512,
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (deterministic for the same texts).

    ``vocab_size`` is an upper bound: a small corpus may yield fewer merges. The special tokens
    take ids 0-3 (``<pad>``, ``<s>``, ``</s>``, ``<unk>``).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single str")
    if not isinstance(vocab_size, int) or vocab_size < BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be an int >= {BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)} "
            f"(256 bytes + 4 special tokens), got {vocab_size!r}"
        )
    if not isinstance(model_max_length, int) or model_max_length < 2:
        raise ValueError(f"model_max_length must be an int >= 2, got {model_max_length!r}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
    corpus = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")
        if text:
            corpus.append(text)
    if not corpus:
        raise ValueError("texts is empty: a tokenizer needs at least one non-empty text")

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="left",
    )


def record_texts(records: Iterable[Preference | Completion]) -> Iterator[str]:
    """Every text field of ``records`` (prompt, chosen, rejected / prompt, response)."""
    for index, record in enumerate(records):
        if isinstance(record, Preference):
            yield from (record.prompt, record.chosen, record.rejected)
        elif isinstance(record, Completion):
            yield from (record.prompt, record.response)
        else:
            raise TypeError(
                f"records[{index}] must be a Preference or Completion, got {type(record).__name__}"
            )


_WARNED_PAD_FALLBACK: weakref.WeakSet[PreTrainedTokenizerBase] = weakref.WeakSet()


def resolve_pad_token_id(
    tokenizer: PreTrainedTokenizerBase, *, missing_pad: MissingPad = "eos"
) -> tuple[int, bool]:
    """The id to pad with, and whether it is the eos fallback (see the module docstring)."""
    if missing_pad not in ("eos", "error"):
        raise ValueError(f"missing_pad must be 'eos' or 'error', got {missing_pad!r}")
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id), False
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if missing_pad == "error":
        raise TokenizerError(
            f"tokenizer {name!r} has no pad token; set tokenizer.pad_token, or pass "
            "missing_pad='eos' to pad with the eos token"
        )
    if tokenizer.eos_token_id is None:
        raise TokenizerError(
            f"tokenizer {name!r} has neither a pad token nor an eos token; set tokenizer.pad_token"
        )
    if tokenizer not in _WARNED_PAD_FALLBACK:  # once per tokenizer object
        _WARNED_PAD_FALLBACK.add(tokenizer)
        warnings.warn(
            f"tokenizer {name!r} has no pad token; padding with the eos token "
            f"{tokenizer.eos_token!r} (id {tokenizer.eos_token_id}); masks come from lengths, so "
            "this is safe",
            UserWarning,
            stacklevel=2,
        )
    return int(tokenizer.eos_token_id), True

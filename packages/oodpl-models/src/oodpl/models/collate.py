"""Tokenise and collate Preference / Completion records into the batch dicts the models consume.

Batch format (every value a ``torch.long`` tensor; masks hold 0/1)
-------------------------------------------------------------------
A *sequence batch* (``CompletionCollator``; also what :func:`split_pair_batch` and
:func:`concat_pair_batch` return) holds, for B records:

causal LMs (``family="causal"``: Pythia, Gemma, Llama, ...)::

    input_ids        [B, T]  prompt ⊕ response (⊕ eos), padded on ``padding_side``
    attention_mask   [B, T]  1 on real tokens, 0 on padding
    response_mask    [B, T]  1 on the response tokens of input_ids (incl. the appended eos)

seq2seq LMs (``family="seq2seq"``: T5), METHODS §1 — x is the encoder input, y the decoder input::

    input_ids               [B, S]  prompt (encoder input)
    attention_mask          [B, S]
    decoder_input_ids       [B, T]  decoder_start ⊕ response (⊕ eos)
    decoder_attention_mask  [B, T]
    response_mask           [B, T]  1 on the response tokens of decoder_input_ids

One rule serves both: the *scored sequence* is ``decoder_input_ids`` when present, else
``input_ids``. Token t of it with ``response_mask[:, t] == 1`` is predicted from position t-1 (so
``response_mask[:, 0]`` is always 0); ``n_tokens = response_mask.sum(1)``. The reward is read at the
last position where the scored sequence's attention mask is 1 (left and right padding alike).

A *pair batch* (``PreferenceCollator``) holds the keys above twice, prefixed ``chosen_`` and
``rejected_`` (``chosen_input_ids``, ``rejected_response_mask``, ...). Both halves are padded to
the same lengths, so :func:`concat_pair_batch` stacks them into one sequence batch of 2B rows
(chosen rows first) for a single forward pass.

Truncation (counted in :class:`TruncationStats`, ``collator.truncation_stats``)
-----------------------------------------------------------------------------
causal: with ``L = max_length`` and optional ``P = max_prompt_length``:
(1) the prompt is cut to P tokens; (2) if prompt + response still exceed L, the prompt is cut to
``max(L - |y|, min(|x|, L // 2))`` tokens, then the response to what is left. Prompts lose tokens on
``truncation_side`` ("left" keeps the end of the prompt, next to the response; the default), the
response always keeps its beginning (a cut response loses its eos). seq2seq: the prompt is cut to
``max_prompt_length`` (default ``max_length``) on ``truncation_side`` and the response to
``max_response_length`` (default ``max_length``) tokens.

Tokenise once
-------------
``PreferenceCollator.tokenize(records)`` returns one :class:`TokenizedPreference` per record (the
token lists after truncation, counted in the stats once); the collator accepts those in place of
records and then only pads. Trainers tokenise their dataset once before the first step, so no
step pays for tokenisation and every epoch reuses the same tokens.

Bad input: an empty response (or one that tokenises to nothing) raises
:class:`~oodpl.models.errors.RecordError` naming the record index and field; a tokenizer without a
pad token pads with eos and warns (``missing_pad="eos"``, default; ``collator.pad_fallback_to_eos``
records it) or raises (``missing_pad="error"``), see :mod:`oodpl.models.tokenizer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from oodpl.core.records import Completion, Preference
from oodpl.models.errors import RecordError
from oodpl.models.tokenizer import MissingPad, resolve_pad_token_id

Batch = dict[str, torch.Tensor]
Side = Literal["left", "right"]
PAIR_PREFIXES = ("chosen_", "rejected_")
_UNBOUNDED = 10**9


@dataclass
class TruncationStats:
    """How many records and tokens the collator cut (accumulates over calls)."""

    n_sequences: int = 0
    n_prompts_truncated: int = 0
    n_responses_truncated: int = 0
    prompt_tokens_dropped: int = 0
    response_tokens_dropped: int = 0

    @property
    def n_truncated(self) -> int:
        """Sequences with a cut prompt or response (a sequence cut in both counts once per part)."""
        return self.n_prompts_truncated + self.n_responses_truncated

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.n_prompts_truncated}/{self.n_sequences} prompts truncated "
            f"({self.prompt_tokens_dropped} tokens dropped), {self.n_responses_truncated}/"
            f"{self.n_sequences} responses truncated "
            f"({self.response_tokens_dropped} tokens dropped)"
        )


def _cut(tokens: list[int], keep: int, side: Side) -> list[int]:
    keep = max(keep, 0)
    if len(tokens) <= keep:
        return tokens
    return tokens[len(tokens) - keep :] if side == "left" else tokens[:keep]


def _pad(rows: Sequence[list[int]], value: int, side: Side, multiple: int | None) -> torch.Tensor:
    width = max(len(r) for r in rows)
    if multiple:
        width = -(-width // multiple) * multiple
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if side == "right":
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            else:
                out[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
    return out


def _field(record: Any, index: int, name: str) -> str:
    value = record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)
    if value is None:
        raise RecordError(f"record {index}: missing field {name!r}")
    if not isinstance(value, str):
        kind = type(value).__name__
        raise RecordError(f"record {index}: field {name!r} must be a str, got {kind}")
    if not value:
        raise RecordError(f"record {index}: field {name!r} is empty")
    return value


class _SequenceTokenizer:
    """Shared tokenisation, truncation and padding of (prompt, response) pairs."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        family: Literal["causal", "seq2seq"] = "causal",
        max_length: int | None = None,
        max_prompt_length: int | None = None,
        max_response_length: int | None = None,
        padding_side: Side = "right",
        truncation_side: Side = "left",
        append_eos: bool = True,
        add_bos: bool = False,
        missing_pad: MissingPad = "eos",
        decoder_start_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(
                f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}"
            )
        if family not in ("causal", "seq2seq"):
            raise ValueError(f"family must be 'causal' or 'seq2seq', got {family!r}")
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
        if max_length is None:
            limit = int(getattr(tokenizer, "model_max_length", _UNBOUNDED) or _UNBOUNDED)
            max_length = limit if limit < _UNBOUNDED else None
        for name, value, low in (
            ("max_length", max_length, 2),
            ("max_prompt_length", max_prompt_length, 1),
            ("max_response_length", max_response_length, 1),
            ("pad_to_multiple_of", pad_to_multiple_of, 1),
        ):
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be None or an int >= {low}, got {value!r}")
        if family == "causal" and max_length and (max_prompt_length or 0) >= max_length:
            raise ValueError(
                f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length}) "
                "so that at least one response token fits"
            )
        self.tokenizer = tokenizer
        self.family = family
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.max_response_length = max_response_length
        self.padding_side: Side = padding_side
        self.truncation_side: Side = truncation_side
        self.append_eos = append_eos
        self.add_bos = add_bos
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pad_token_id, self.pad_fallback_to_eos = resolve_pad_token_id(
            tokenizer, missing_pad=missing_pad
        )
        if append_eos and tokenizer.eos_token_id is None:
            raise ValueError("append_eos=True but the tokenizer has no eos token")
        if add_bos and tokenizer.bos_token_id is None:
            raise ValueError("add_bos=True but the tokenizer has no bos token")
        if family == "seq2seq":
            if decoder_start_token_id is None:
                decoder_start_token_id = self.pad_token_id
            if not isinstance(decoder_start_token_id, int):
                raise TypeError("decoder_start_token_id must be an int")
        self.decoder_start_token_id = decoder_start_token_id
        self.truncation_stats = TruncationStats()

    def reset_stats(self) -> TruncationStats:
        """Return the accumulated stats and start counting afresh."""
        stats, self.truncation_stats = self.truncation_stats, TruncationStats()
        return stats

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _tokenize_pair(
        self, prompt: str, response: str, index: int, field: str
    ) -> tuple[list[int], list[int]]:
        bos = [int(self.tokenizer.bos_token_id)] if self.add_bos else []
        x = self._encode(prompt)
        y = self._encode(response)
        if not y:
            raise RecordError(f"record {index}: field {field!r} tokenises to no tokens")
        if self.append_eos:
            y = [*y, int(self.tokenizer.eos_token_id)]
        if self.family == "causal" and not (bos or x):
            raise RecordError(
                f"record {index}: field 'prompt' tokenises to no tokens; a causal LM needs at "
                "least one prompt token to predict the first response token (or use add_bos=True)"
            )
        stats = self.truncation_stats
        stats.n_sequences += 1
        n_x, n_y = len(x), len(y)
        if self.family == "causal":
            if self.max_prompt_length is not None:
                x = _cut(x, self.max_prompt_length - len(bos), self.truncation_side)
            if self.max_length is not None and len(bos) + len(x) + len(y) > self.max_length:
                room = self.max_length - len(bos)
                x = _cut(x, max(room - len(y), min(len(x), room // 2)), self.truncation_side)
                y = _cut(y, room - len(x), "right")
        else:
            prompt_limit = self.max_prompt_length or self.max_length
            if prompt_limit is not None:
                x = _cut(x, prompt_limit - len(bos), self.truncation_side)
            response_limit = self.max_response_length or self.max_length
            if response_limit is not None:
                y = _cut(y, response_limit, "right")
        if not y:
            raise RecordError(
                f"record {index}: field {field!r} has no tokens left after truncation"
            )
        if len(x) < n_x:
            stats.n_prompts_truncated += 1
            stats.prompt_tokens_dropped += n_x - len(x)
        if len(y) < n_y:
            stats.n_responses_truncated += 1
            stats.response_tokens_dropped += n_y - len(y)
        return bos + x, y

    def _collate(self, pairs: Sequence[tuple[list[int], list[int]]]) -> Batch:
        """Pad (prompt, response) token lists into a sequence batch (format above)."""
        side, pad, multiple = self.padding_side, self.pad_token_id, self.pad_to_multiple_of
        out: Batch = {}
        if self.family == "causal":
            seqs = [x + y for x, y in pairs]
            resp = [[0] * len(x) + [1] * len(y) for x, y in pairs]
            ids_key, mask_key = "input_ids", "attention_mask"
        else:
            start = int(self.decoder_start_token_id)  # type: ignore[arg-type]
            prompts = [x for x, _ in pairs]
            out["input_ids"] = _pad(prompts, pad, side, multiple)
            out["attention_mask"] = _pad([[1] * len(x) for x in prompts], 0, side, multiple)
            seqs = [[start, *y] for _, y in pairs]
            resp = [[0] + [1] * len(y) for _, y in pairs]
            ids_key, mask_key = "decoder_input_ids", "decoder_attention_mask"
        out[ids_key] = _pad(seqs, pad, side, multiple)
        out[mask_key] = _pad([[1] * len(s) for s in seqs], 0, side, multiple)
        out["response_mask"] = _pad(resp, 0, side, multiple)
        return out


def _pad_to(batch: Batch, key: str, width: int, side: Side, value: int) -> None:
    tensor = batch[key]
    extra = width - tensor.shape[1]
    if extra > 0:
        fill = torch.full((tensor.shape[0], extra), value, dtype=tensor.dtype)
        batch[key] = torch.cat([tensor, fill] if side == "right" else [fill, tensor], dim=1)


def _equalise(halves: list[Batch], side: Side, pad_id: int) -> None:
    """Pad every half of a pair batch to the same lengths (ids with pad_id, masks with 0)."""
    for key in halves[0]:
        width = max(h[key].shape[1] for h in halves)
        value = pad_id if key.endswith("input_ids") else 0
        for half in halves:
            _pad_to(half, key, width, side, value)


class CompletionCollator(_SequenceTokenizer):
    """``Completion`` records (or mappings with prompt/response) -> a sequence batch (see above)."""

    def __call__(self, records: Sequence[Completion | Mapping[str, Any]]) -> Batch:
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)) or not records:
            raise ValueError("records must be a non-empty sequence of Completion records")
        pairs = []
        for index, record in enumerate(records):
            prompt = _field(record, index, "prompt")
            response = _field(record, index, "response")
            pairs.append(self._tokenize_pair(prompt, response, index, "response"))
        return self._collate(pairs)


TokenPair = tuple[list[int], list[int]]
"""``(prompt_ids, response_ids)`` after truncation: bos included, appended eos included."""


@dataclass(frozen=True)
class TokenizedPreference:
    """One preference record tokenised by :meth:`PreferenceCollator.tokenize`.

    Attributes:
        chosen, rejected: ``(prompt_ids, response_ids)`` of ``x ⊕ y_w`` and ``x ⊕ y_l`` (the two
            prompts differ only when truncation cut them differently).
        index: position of the record in the sequence that was tokenised.
    """

    chosen: TokenPair
    rejected: TokenPair
    index: int = 0

    def lengths(self) -> tuple[int, int]:
        """Token counts of the two sequences (causal: prompt + response; seq2seq: response + 1)."""
        return (
            len(self.chosen[0]) + len(self.chosen[1]),
            len(self.rejected[0]) + len(self.rejected[1]),
        )


class PreferenceCollator(_SequenceTokenizer):
    """``Preference`` records (or mappings with prompt/chosen/rejected) -> a pair batch.

    Also accepts :class:`TokenizedPreference` items from :meth:`tokenize` (then it only pads).
    """

    def tokenize(
        self, records: Sequence[Preference | Mapping[str, Any]]
    ) -> list[TokenizedPreference]:
        """Tokenise and truncate every record once (errors name the record index)."""
        if not isinstance(records, Sequence) or isinstance(records, (str, bytes)) or not records:
            raise ValueError("records must be a non-empty sequence of Preference records")
        out = []
        for index, record in enumerate(records):
            if isinstance(record, TokenizedPreference):
                out.append(record)
                continue
            prompt = _field(record, index, "prompt")
            chosen = self._tokenize_pair(prompt, _field(record, index, "chosen"), index, "chosen")
            rejected = self._tokenize_pair(
                prompt, _field(record, index, "rejected"), index, "rejected"
            )
            out.append(TokenizedPreference(chosen, rejected, index))
        return out

    def __call__(
        self, records: Sequence[Preference | Mapping[str, Any] | TokenizedPreference]
    ) -> Batch:
        items = self.tokenize(records)
        chosen = [item.chosen for item in items]
        rejected = [item.rejected for item in items]
        halves = [self._collate(chosen), self._collate(rejected)]
        _equalise(halves, self.padding_side, self.pad_token_id)
        out: Batch = {}
        for prefix, half in zip(PAIR_PREFIXES, halves, strict=True):
            out.update({prefix + key: value for key, value in half.items()})
        return out


def is_pair_batch(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` is a pair batch (``chosen_*`` / ``rejected_*`` keys)."""
    return "chosen_input_ids" in batch and "rejected_input_ids" in batch


def split_pair_batch(pair_batch: Mapping[str, torch.Tensor], which: str) -> Batch:
    """The ``"chosen"`` or ``"rejected"`` half of a pair batch as a sequence batch."""
    if which not in ("chosen", "rejected"):
        raise ValueError(f"which must be 'chosen' or 'rejected', got {which!r}")
    if not is_pair_batch(pair_batch):
        raise ValueError("pair_batch needs chosen_* and rejected_* keys (see oodpl.models.collate)")
    prefix = which + "_"
    return {k[len(prefix) :]: v for k, v in pair_batch.items() if k.startswith(prefix)}


def concat_pair_batch(pair_batch: Mapping[str, torch.Tensor]) -> tuple[Batch, int]:
    """Stack chosen over rejected into one sequence batch of 2B rows; returns (batch, B)."""
    chosen = split_pair_batch(pair_batch, "chosen")
    rejected = split_pair_batch(pair_batch, "rejected")
    if chosen.keys() != rejected.keys():
        raise ValueError(
            f"pair_batch halves have different keys: {sorted(chosen)} vs {sorted(rejected)}"
        )
    n_pairs = chosen["input_ids"].shape[0]
    out: Batch = {}
    for key, value in chosen.items():
        other = rejected[key]
        if value.shape[0] != n_pairs or other.shape[0] != n_pairs:
            raise ValueError(f"pair_batch['chosen_{key}'/'rejected_{key}'] batch sizes differ")
        if value.shape[1:] != other.shape[1:]:
            raise ValueError(
                f"pair_batch['chosen_{key}'] has shape {tuple(value.shape)} but "
                f"'rejected_{key}' has {tuple(other.shape)}; pad both halves to one length"
            )
        out[key] = torch.cat([value, other], dim=0)
    return out, n_pairs


__all__ = [
    "PAIR_PREFIXES",
    "Batch",
    "CompletionCollator",
    "PreferenceCollator",
    "TokenPair",
    "TokenizedPreference",
    "TruncationStats",
    "concat_pair_batch",
    "is_pair_batch",
    "split_pair_batch",
]

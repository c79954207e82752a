"""Padding-free ("packed") pair batches: every chosen and rejected sequence of a batch in ONE row.

A *packed batch* (a plain ``dict[str, Tensor]``, so engines move it to the device like any other
batch) holds, for B pairs of a causal LM, the 2B sequences ``x ⊕ y_w`` (pairs 0..B-1, chosen rows
first) then ``x ⊕ y_l`` concatenated without padding, N = total number of real tokens::

    packed_input_ids      [1, N]    long   tokens of all 2B sequences, back to back
    packed_position_ids   [1, N]    long   position within its own sequence (restarts at 0)
    packed_response_mask  [1, N]    long   1 on response tokens (as ``response_mask``, collate.py)
    cu_seqlens            [2B + 1]  int32  sequence boundaries: sequence s is tokens
                                           ``cu_seqlens[s] : cu_seqlens[s + 1]`` (flash-attn format)
    n_pairs               []        long   B

Sequence s < B is the chosen response of pair s, sequence B + s its rejected response: the same
order as :func:`oodpl.models.collate.concat_pair_batch`, so per-pair results of the packed and the
padded path line up. Any other key of the pair batch whose first dimension is B (e.g. DPO's
``reference_chosen_logps``) is carried over unchanged.

No compute goes to padding: the forward (:mod:`oodpl.models.packed_forward`) runs on N tokens
instead of ``2B × T_max``. Attention never crosses sequence boundaries (position ids restarting at
0 select transformers' packed-sequence path, or an explicit block-diagonal causal mask is passed).

Seq2seq models (T5) are not packed (the encoder and the decoder would each need their own
boundaries and cross-attention mask); :func:`pack_pair_batch` raises for them — use the
length-bucketed sampler (:mod:`oodpl.models.bucketing`) to cut padding instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from oodpl.models.collate import (
    Batch,
    PreferenceCollator,
    TokenizedPreference,
    concat_pair_batch,
    is_pair_batch,
)

PACKED_KEYS = ("packed_input_ids", "packed_position_ids", "packed_response_mask", "cu_seqlens")


def is_packed_batch(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` is a packed batch (module docstring)."""
    return isinstance(batch, Mapping) and all(key in batch for key in (*PACKED_KEYS, "n_pairs"))


def pack_sequences(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> Batch:
    """Pack the rows of a padded causal sequence batch (left or right padding) into one row.

    Returns the ``packed_*`` keys and ``cu_seqlens`` of the module docstring (no ``n_pairs``).
    Tokens with ``attention_mask == 0`` are dropped; the real tokens of each row must be contiguous
    (true for the collators' left and right padding).
    """
    for name, value in (
        ("input_ids", input_ids),
        ("attention_mask", attention_mask),
        ("response_mask", response_mask),
    ):
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor [B, T]")
        if value.dtype.is_floating_point or value.dtype.is_complex:
            raise ValueError(f"{name} must hold integers, got {value.dtype}")
        if value.shape != input_ids.shape:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}, input_ids {tuple(input_ids.shape)}"
            )
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids is empty (batch size 0)")
    real = attention_mask.bool()
    lengths = real.sum(dim=1)
    if bool((lengths == 0).any()):
        rows = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} have no real token")
    first = real.long().argmax(dim=1)
    span = torch.arange(real.shape[1], device=real.device)[None, :]
    contiguous = (span >= first[:, None]) & (span < (first + lengths)[:, None])
    if not bool((contiguous == real).all()):
        rows = torch.nonzero((contiguous != real).any(dim=1)).flatten().tolist()
        raise ValueError(f"attention_mask rows {rows} have holes: real tokens must be contiguous")
    if bool((response_mask.bool() & ~real).any()):
        raise ValueError("response_mask marks padding positions")
    position_ids = (real.long().cumsum(dim=1) - 1)[real]
    cu_seqlens = torch.zeros(lengths.shape[0] + 1, dtype=torch.int32, device=lengths.device)
    cu_seqlens[1:] = lengths.cumsum(0).to(torch.int32)
    return {
        "packed_input_ids": input_ids[real][None, :],
        "packed_position_ids": position_ids[None, :],
        "packed_response_mask": response_mask[real][None, :].long(),
        "cu_seqlens": cu_seqlens,
    }


def pack_pair_batch(pair_batch: Mapping[str, torch.Tensor]) -> Batch:
    """A padded causal pair batch (:class:`~oodpl.models.collate.PreferenceCollator`) -> a packed
    batch (module docstring). Keys other than ``chosen_*`` / ``rejected_*`` are carried over."""
    if not is_pair_batch(pair_batch):
        raise ValueError("pair_batch needs chosen_* and rejected_* keys (see oodpl.models.collate)")
    if "chosen_decoder_input_ids" in pair_batch:
        raise ValueError(
            "pair_batch is a seq2seq (encoder-decoder) batch: packing supports causal LMs only; "
            "use oodpl.models.bucketing.LengthBucketedBatchSampler for T5"
        )
    stacked, n_pairs = concat_pair_batch(pair_batch)
    for key in ("input_ids", "attention_mask", "response_mask"):
        if key not in stacked:
            raise ValueError(f"pair_batch lacks 'chosen_{key}' / 'rejected_{key}'")
    packed = pack_sequences(
        stacked["input_ids"], stacked["attention_mask"], stacked["response_mask"]
    )
    response = packed["packed_response_mask"][0]
    starts = packed["cu_seqlens"][:-1].long()
    if bool(response[starts].any()):
        raise ValueError("pair_batch: a response token sits at position 0 of its sequence")
    per_sequence = torch.zeros(2 * n_pairs, dtype=torch.long, device=response.device)
    per_sequence.index_add_(0, sequence_index(packed["cu_seqlens"]), response)
    if bool((per_sequence == 0).any()):
        rows = torch.nonzero(per_sequence == 0).flatten().tolist()
        raise ValueError(f"pair_batch: stacked rows {rows} have no response token")
    packed["n_pairs"] = torch.tensor(n_pairs, dtype=torch.long)
    for key, value in pair_batch.items():
        if not key.startswith(("chosen_", "rejected_")):
            packed[key] = value
    return packed


def sequence_index(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Index of the sequence each packed token belongs to, ``[N]`` long."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.shape[0], device=lengths.device), lengths)


def block_diagonal_causal_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Boolean ``[1, 1, N, N]`` mask: token i may attend to j iff both lie in one sequence and
    ``j <= i`` (True = attend). This is the sdpa convention; see
    :func:`oodpl.models.packed_forward.attention_mask_for` for the eager (additive) form."""
    segment = sequence_index(cu_seqlens)
    n = segment.shape[0]
    positions = torch.arange(n, device=segment.device)
    causal = positions[:, None] >= positions[None, :]
    same = segment[:, None] == segment[None, :]
    return (causal & same)[None, None]


def pack_tokenized(items: Sequence[TokenizedPreference]) -> Batch:
    """Pre-tokenised pairs (:meth:`PreferenceCollator.tokenize`) -> a packed batch, directly from
    the token lists (no padded intermediate): the same tensors as
    ``pack_pair_batch(collator(items))``."""
    if not items:
        raise ValueError("items is empty: need at least one TokenizedPreference")
    sequences = [item.chosen for item in items] + [item.rejected for item in items]
    ids: list[int] = []
    positions: list[int] = []
    response: list[int] = []
    lengths: list[int] = []
    for slot, (prompt, reply) in enumerate(sequences):
        if not prompt:
            pair = items[slot % len(items)]
            raise ValueError(
                f"record {pair.index}: a packed causal sequence needs at least one prompt token "
                "(a response token cannot sit at position 0)"
            )
        length = len(prompt) + len(reply)
        ids += prompt
        ids += reply
        positions += range(length)
        response += [0] * len(prompt)
        response += [1] * len(reply)
        lengths.append(length)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return {
        "packed_input_ids": torch.tensor(ids, dtype=torch.long)[None, :],
        "packed_position_ids": torch.tensor(positions, dtype=torch.long)[None, :],
        "packed_response_mask": torch.tensor(response, dtype=torch.long)[None, :],
        "cu_seqlens": cu_seqlens,
        "n_pairs": torch.tensor(len(items), dtype=torch.long),
    }


def shared_prefix_length(item: TokenizedPreference) -> int:
    """``C = min(lcp(s_w, s_l), |s_w| − 1, |s_l| − 1)``: the tokens a prefix-shared segment runs
    once for both sequences (:mod:`oodpl.models.shared_prefix`)."""
    s_w, s_l = item.chosen[0] + item.chosen[1], item.rejected[0] + item.rejected[1]
    common = 0
    for a, b in zip(s_w, s_l, strict=False):
        if a != b:
            break
        common += 1
    return min(common, len(s_w) - 1, len(s_l) - 1)


def packed_saving(items: Sequence[TokenizedPreference], layout: str = "sequences") -> float:
    """Share of the padded batch's ``2B · max L`` token positions that packing in ``layout``
    does not compute: padding (``"sequences"``: exactly the padding share,
    ``1 − Σ_s L_s / (2B · max_s L_s)``, both halves being padded to one width), plus
    (``"shared_prefix"``) the second copy of each shared prefix."""
    lengths = [n for item in items for n in item.lengths()]
    packed = sum(lengths)
    if layout == "shared_prefix":
        packed -= sum(shared_prefix_length(item) for item in items)
    return 1.0 - packed / (len(lengths) * max(lengths))


PACKING_MODES = ("auto", "always", "never")
PACKED_LAYOUTS = ("sequences", "shared_prefix")
"""``"sequences"``: the 2B sequences back to back (this module; flash-attention varlen kernels
take it through position ids). ``"shared_prefix"``: one segment per pair with the prompt run
once (:mod:`oodpl.models.shared_prefix`)."""
AUTO_PACKING_MIN_PADDING = 0.1
"""``packing="auto"`` packs a batch when packing saves at least this share of the padded batch's
token positions (:func:`packed_saving`) ...

Below it the padded batch is as fast or faster: one batched attention call per layer against one
or two per packed segment (measured on CPU, pythia-tiny, 8 pairs of 64 + 63 tokens, no padding:
separate sequences packed 0.9-1.1x the time of padded; prefix-shared 0.75x)."""
AUTO_PACKING_MIN_MEAN_LENGTH = 32
"""... and its sequences are on average at least this many tokens long: for very short
sequences the per-segment attention calls cost as much as the saved positions (pythia-tiny,
forward + backward of 8 pairs, CPU: prompt = response length, mean sequence length 32 / 48 / 64 /
96 tokens: prefix-shared 1.03 / 0.81 / 0.91 / 0.79x the time of padded for the reward model,
0.90 / 0.85 / 0.99 / 0.83x for the policy; prompt 32 + responses of 8-48 tokens: 0.71 / 0.74x)."""


class PackedPreferenceCollator:
    """Records (or :class:`TokenizedPreference` items) -> a packed batch (or, with
    ``mode="auto"``, a padded pair batch when the batch has little padding).

    ``PackedPreferenceCollator(policy.preference_collator(**overrides))`` keeps the model's
    tokenisation and truncation settings; padding side does not matter (padding is dropped).
    ``mode="always"`` packs every batch; ``"auto"`` packs when :meth:`worth_packing` (packing
    saves at least ``min_padding`` of the positions, default :data:`AUTO_PACKING_MIN_PADDING`,
    and sequences are not short). Both forms give
    the same per-pair results (to float rounding), see :mod:`oodpl.models.packed_forward`.
    ``layout`` is one of :data:`PACKED_LAYOUTS`. Counters ``n_packed`` / ``n_padded`` say how
    many batches took each form.
    """

    def __init__(
        self,
        collator: PreferenceCollator,
        *,
        mode: str = "always",
        min_padding: float = AUTO_PACKING_MIN_PADDING,
        layout: str = "sequences",
    ) -> None:
        if not isinstance(collator, PreferenceCollator):
            raise TypeError(f"collator must be a PreferenceCollator, got {type(collator).__name__}")
        if getattr(collator, "family", "causal") != "causal":
            raise ValueError(
                "collator.family is 'seq2seq': packing supports causal LMs only; use "
                "oodpl.models.bucketing.LengthBucketedBatchSampler for T5"
            )
        if mode not in ("auto", "always"):
            raise ValueError(f"mode must be 'auto' or 'always', got {mode!r}")
        if not isinstance(min_padding, (int, float)) or not 0.0 <= min_padding <= 1.0:
            raise ValueError(f"min_padding must be in [0, 1], got {min_padding!r}")
        if layout not in PACKED_LAYOUTS:
            raise ValueError(f"layout must be one of {PACKED_LAYOUTS}, got {layout!r}")
        self.collator = collator
        self.layout = layout
        if layout == "shared_prefix":
            from oodpl.models.shared_prefix import pack_shared_prefix

            self._pack = pack_shared_prefix
        else:
            self._pack = pack_tokenized
        self.mode = mode
        self.min_padding = float(min_padding)
        self.n_packed = 0
        self.n_padded = 0

    @property
    def truncation_stats(self) -> Any:
        return self.collator.truncation_stats

    def worth_packing(self, items: Sequence[TokenizedPreference]) -> bool:
        """The ``"auto"`` rule: :func:`packed_saving` >= ``min_padding`` and a mean sequence
        length >= :data:`AUTO_PACKING_MIN_MEAN_LENGTH`."""
        lengths = [n for item in items for n in item.lengths()]
        long_enough = sum(lengths) >= AUTO_PACKING_MIN_MEAN_LENGTH * len(lengths)
        return long_enough and packed_saving(items, self.layout) >= self.min_padding

    def __call__(self, records: Sequence[Any]) -> Batch:
        items = self.collator.tokenize(records)
        if self.mode == "auto" and not self.worth_packing(items):
            self.n_padded += 1
            return self.collator(items)
        self.n_packed += 1
        return self._pack(items)


__all__ = [
    "AUTO_PACKING_MIN_MEAN_LENGTH",
    "AUTO_PACKING_MIN_PADDING",
    "PACKED_KEYS",
    "PACKED_LAYOUTS",
    "PACKING_MODES",
    "PackedPreferenceCollator",
    "block_diagonal_causal_mask",
    "is_packed_batch",
    "pack_pair_batch",
    "pack_sequences",
    "pack_tokenized",
    "packed_saving",
    "sequence_index",
    "shared_prefix_length",
]

"""Prefix-shared packing: the prompt of a preference pair is run once, not once per response.

A pair's two sequences ``s_w = x ⊕ y_w`` and ``s_l = x ⊕ y_l`` share their first ``C`` tokens
(the prompt, and any common start of the responses). A causal LM's hidden states at those
positions are the same in both sequences, so the pair is packed as one *segment*

    [ c (C tokens) | t_w = s_w[C:] (R_w tokens) | t_l = s_l[C:] (R_l tokens) ]

with ``C = min(lcp(s_w, s_l), |s_w| − 1, |s_l| − 1)`` (each tail keeps ≥ 1 token, so each
sequence has its own last token), position ids ``0..|s_w|−1`` over ``c ⊕ t_w`` and
``C..|s_l|−1`` over ``t_l``, and a two-branch ("tree") causal mask: token ``i`` attends to ``j``
iff both lie in one segment, ``j ≤ i``, and not (``i ∈ t_l`` and ``j ∈ t_w``). Every token then
sees exactly the tokens before it in its own sequence, so hidden states, rewards and log-probs
equal those of the two separate sequences (to float rounding; tests ≤ 1e-5 in float32), and
gradients are the same sums (the shared positions receive both sequences' gradients).

Compute: a pair costs ``C + R_w + R_l`` token positions instead of ``2C + R_w + R_l`` (prompt
256 + responses 255: 767 instead of 1,022, −25 %) on top of packing's removal of padding.

Batch (``pack_shared_prefix``)::

    shared_input_ids     [1, N]   long   tokens of all segments, back to back
    shared_position_ids  [1, N]   long   positions within the segment's own sequences
    segment_bounds       [B + 1]  int32  segment b is tokens segment_bounds[b]:segment_bounds[b+1]
    branch_lengths       [B, 3]   long   (C, R_w, R_l) per pair
    reward_index         [2B]     long   packed index of the last token of s_w (b) and s_l (B + b)
    target_index         [M]      long   packed index of each response token scored
    predictor_index      [M]      long   packed index of the position predicting it
    target_owner         [M]      long   its sequence: b (chosen) or B + b (rejected)
    n_pairs              []       long   B

(a response token inside the shared part is scored for both sequences: it appears twice.)

The forward passes on this layout (attention per segment, rewards, log-probs) are in
:mod:`oodpl.models.shared_prefix_forward`. Causal LMs with plain causal attention only (as
``packed_forward``'s ``"varlen"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from oodpl.models.backbone import unwrap
from oodpl.models.collate import Batch, TokenizedPreference
from oodpl.models.packed_forward import supports_varlen
from oodpl.models.packing import shared_prefix_length

SHARED_KEYS = (
    "shared_input_ids",
    "shared_position_ids",
    "segment_bounds",
    "branch_lengths",
    "reward_index",
    "target_index",
    "predictor_index",
    "target_owner",
    "n_pairs",
)


def packed_layout(model: nn.Module) -> str:
    """The packed layout for a RewardModel / Policy: ``"shared_prefix"`` for plain causal
    attention without flash kernels, else ``"sequences"`` (flash-attention varlen kernels take
    separate sequences through position ids; sliding windows / soft-capping need the dense mask
    of :mod:`oodpl.models.packed_forward`)."""
    implementation = getattr(unwrap(model.model).config, "_attn_implementation", None) or ""
    if supports_varlen(model.model) and "flash" not in implementation:
        return "shared_prefix"
    return "sequences"


def is_shared_prefix_batch(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` is a prefix-shared packed batch (module docstring)."""
    return isinstance(batch, Mapping) and all(key in batch for key in SHARED_KEYS)


def pack_shared_prefix(items: Sequence[TokenizedPreference]) -> Batch:
    """Pre-tokenised pairs -> a prefix-shared packed batch (module docstring)."""
    if not items:
        raise ValueError("items is empty: need at least one TokenizedPreference")
    n = len(items)
    ids: list[int] = []
    positions: list[int] = []
    branches: list[tuple[int, int, int]] = []
    bounds = [0]
    reward = [0] * (2 * n)
    targets: list[int] = []
    predictors: list[int] = []
    owners: list[int] = []
    for b, item in enumerate(items):
        (x_w, y_w), (x_l, y_l) = item.chosen, item.rejected
        if not x_w or not x_l:
            raise ValueError(
                f"record {item.index}: a packed causal sequence needs at least one prompt token "
                "(a response token cannot sit at position 0)"
            )
        s_w, s_l = x_w + y_w, x_l + y_l
        shared = shared_prefix_length(item)
        start = bounds[-1]
        tail_w, tail_l = len(s_w) - shared, len(s_l) - shared
        ids += s_w
        ids += s_l[shared:]
        positions += range(len(s_w))
        positions += range(shared, len(s_l))
        branches.append((shared, tail_w, tail_l))
        bounds.append(start + shared + tail_w + tail_l)
        reward[b] = start + len(s_w) - 1
        reward[n + b] = bounds[-1] - 1

        # chosen: position p sits at start + p; rejected: at start + p below the shared prefix,
        # start + tail_w + p from it on (ranges, not per-token calls: this runs every batch)
        n_w = len(s_w) - len(x_w)
        targets += range(start + len(x_w), start + len(s_w))
        predictors += range(start + len(x_w) - 1, start + len(s_w) - 1)
        owners += [b] * n_w
        first = len(x_l)  # first response position of s_l (>= 1)
        split = max(first, shared)
        targets += range(start + first, start + split)
        targets += range(start + tail_w + split, start + tail_w + len(s_l))
        # predictor of position p is p - 1, mapped with the same rule
        split_p = max(first - 1, shared)  # first predictor position at or past the prefix
        predictors += range(start + first - 1, start + min(split_p, len(s_l) - 1))
        predictors += range(start + tail_w + split_p, start + tail_w + len(s_l) - 1)
        owners += [n + b] * (len(s_l) - first)
    return {
        "shared_input_ids": torch.tensor(ids, dtype=torch.long)[None, :],
        "shared_position_ids": torch.tensor(positions, dtype=torch.long)[None, :],
        "segment_bounds": torch.tensor(bounds, dtype=torch.int32),
        "branch_lengths": torch.tensor(branches, dtype=torch.long),
        "reward_index": torch.tensor(reward, dtype=torch.long),
        "target_index": torch.tensor(targets, dtype=torch.long),
        "predictor_index": torch.tensor(predictors, dtype=torch.long),
        "target_owner": torch.tensor(owners, dtype=torch.long),
        "n_pairs": torch.tensor(n, dtype=torch.long),
    }


def shared_prefix_mask(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Boolean ``[1, 1, N, N]`` two-branch causal mask of the module docstring (True = attend)."""
    branches = batch["branch_lengths"].long()
    n_pairs = branches.shape[0]
    lengths = branches.reshape(-1)
    segment = torch.repeat_interleave(torch.arange(n_pairs), branches.sum(dim=1))
    branch = torch.repeat_interleave(torch.arange(3).repeat(n_pairs), lengths)
    index = torch.arange(segment.shape[0])
    allowed = (segment[:, None] == segment[None, :]) & (index[:, None] >= index[None, :])
    allowed &= ~((branch[:, None] == 2) & (branch[None, :] == 1))
    return allowed[None, None]


__all__ = [
    "SHARED_KEYS",
    "is_shared_prefix_batch",
    "pack_shared_prefix",
    "packed_layout",
    "shared_prefix_mask",
]

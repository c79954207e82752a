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

Attention runs per segment with two ``scaled_dot_product_attention`` calls: ``c ⊕ t_w`` causally
on itself, and ``t_l`` against ``c ⊕ t_l`` with a lower-right-aligned causal mask
(``[R_l, C + R_l]``, built once per forward): no ``N × N`` mask. Pairs with identical branch
lengths (all of them at fixed lengths) share one batched call per branch. That attention function is
registered with ``transformers.AttentionInterface`` (``"oodpl_shared_prefix"``) and selected for
the forward only; where it cannot be used (activation checkpointing re-runs layers outside this
forward; flash-attention models) the same mask is passed explicitly as a ``[1, 1, N, N]`` tensor.
Causal LMs with plain causal attention only (as ``packed_forward``'s ``"varlen"``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface

from oodpl.models.backbone import _accepts_position_ids, unwrap
from oodpl.models.collate import Batch, TokenizedPreference
from oodpl.models.logps import DEFAULT_CHUNK_SIZE
from oodpl.models.packed_forward import (
    _attention_implementation,
    _checkpointing,
    packed_row_kv,
    pair_scores,
    policy_response_logps,
    require_logits_from_hidden,
    supports_varlen,
)
from oodpl.models.packing import shared_prefix_length

SHARED_PREFIX_ATTENTION = "oodpl_shared_prefix"
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


class _Layout:
    """The branch lengths of one packed row, grouped for batched attention calls.

    Pairs with identical ``(C, R_w, R_l)`` (every pair, at fixed lengths) run as one batched
    ``scaled_dot_product_attention`` call per branch; the lower-right causal masks of the
    rejected branch are built once per forward and reused by every layer.
    """

    def __init__(self, branches: list[tuple[int, int, int]]) -> None:
        self.branches = branches
        self.sizes = [n for c, w, l_ in branches for n in (c + w, l_)]
        groups: dict[tuple[int, int, int], list[int]] = {}
        for index, branch in enumerate(branches):
            groups.setdefault(branch, []).append(index)
        self.groups = list(groups.items())
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def rejected_mask(self, shared: int, tail: int, device: torch.device) -> torch.Tensor:
        """``[R_l, C + R_l]``: row i sees the prefix and tail tokens 0..i (lower-right causal)."""
        key = (shared, tail, device)
        if key not in self._masks:
            full = torch.ones(tail, shared + tail, dtype=torch.bool, device=device)
            self._masks[key] = full.tril(shared)
        return self._masks[key]


_LAYOUT: contextvars.ContextVar[_Layout | None] = contextvars.ContextVar(
    "oodpl_shared_prefix_layout", default=None
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


def shared_prefix_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Two-branch causal attention per segment (module docstring); returns ``[1, N, H, D]``."""
    layout = _LAYOUT.get()
    key, value = packed_row_kv(
        SHARED_PREFIX_ATTENTION,
        "prefix-shared rows; use oodpl.models.shared_prefix",
        layout is not None,
        query,
        key,
        value,
        attention_mask,
    )
    assert layout is not None
    if len(layout.groups) == 1:  # every pair has the same branch lengths: views, no stacking
        return _uniform_attention(layout, query, key, value, scaling, dropout), None
    # per pair: [c ⊕ t_w | t_l]; split (one cat in backward), not slicing (a full-size zero
    # gradient per slice)
    qs, ks, vs = (t[0].split(layout.sizes, dim=1) for t in (query, key, value))
    n_pairs = len(layout.branches)
    chosen: list[torch.Tensor | None] = [None] * n_pairs
    rejected: list[torch.Tensor | None] = [None] * n_pairs
    for (shared, _, tail_l), members in layout.groups:
        w_idx, l_idx = [2 * b for b in members], [2 * b + 1 for b in members]
        out_w = F.scaled_dot_product_attention(
            torch.stack([qs[i] for i in w_idx]),
            torch.stack([ks[i] for i in w_idx]),
            torch.stack([vs[i] for i in w_idx]),
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
        )
        keys_l = [
            torch.cat([ks[w].narrow(1, 0, shared), ks[l_]], dim=1)
            for w, l_ in zip(w_idx, l_idx, strict=True)
        ]
        values_l = [
            torch.cat([vs[w].narrow(1, 0, shared), vs[l_]], dim=1)
            for w, l_ in zip(w_idx, l_idx, strict=True)
        ]
        out_l = F.scaled_dot_product_attention(
            torch.stack([qs[i] for i in l_idx]),
            torch.stack(keys_l),
            torch.stack(values_l),
            attn_mask=layout.rejected_mask(shared, tail_l, query.device),
            dropout_p=dropout,
            scale=scaling,
        )
        for position, b in enumerate(members):
            chosen[b], rejected[b] = out_w[position], out_l[position]
    pieces = [t for b in range(n_pairs) for t in (chosen[b], rejected[b])]
    return torch.cat(pieces, dim=1).transpose(0, 1)[None].contiguous(), None


def _uniform_attention(
    layout: _Layout,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float | None,
    dropout: float,
) -> torch.Tensor:
    """The batched form when all B segments have one ``(C, R_w, R_l)``: ``[1, H, B·S, D]`` is
    viewed as ``[B, H, S, D]`` and split into the two branches (views; one cat per branch)."""
    (shared, tail_w, tail_l), members = layout.groups[0]
    n, heads, dim = len(members), query.shape[1], query.shape[-1]
    segment = shared + tail_w + tail_l

    def per_pair(t: torch.Tensor) -> torch.Tensor:  # [1, H, B·S, D] -> [B, H, S, D] (a view)
        return t[0].unflatten(1, (n, segment)).transpose(0, 1)

    q, k, v = per_pair(query), per_pair(key), per_pair(value)
    q_w, q_l = q.split([shared + tail_w, tail_l], dim=2)
    k_c, k_w, k_l = k.split([shared, tail_w, tail_l], dim=2)
    v_c, v_w, v_l = v.split([shared, tail_w, tail_l], dim=2)
    out_w = F.scaled_dot_product_attention(
        q_w,
        torch.cat([k_c, k_w], dim=2),
        torch.cat([v_c, v_w], dim=2),
        dropout_p=dropout,
        is_causal=True,
        scale=scaling,
    )
    out_l = F.scaled_dot_product_attention(
        q_l,
        torch.cat([k_c, k_l], dim=2),
        torch.cat([v_c, v_l], dim=2),
        attn_mask=layout.rejected_mask(shared, tail_l, query.device),
        dropout_p=dropout,
        scale=scaling,
    )
    out = torch.cat([out_w, out_l], dim=2)  # [B, H, S, D]
    return out.transpose(1, 2).reshape(1, n * segment, heads, dim)


AttentionInterface.register(SHARED_PREFIX_ATTENTION, shared_prefix_attention_forward)


@contextlib.contextmanager
def _layout(batch: Mapping[str, torch.Tensor]) -> Iterator[None]:
    token = _LAYOUT.set(_Layout([tuple(row) for row in batch["branch_lengths"].tolist()]))
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def _check(batch: Mapping[str, torch.Tensor], max_positions: int | None) -> None:
    if not is_shared_prefix_batch(batch):
        missing = [k for k in SHARED_KEYS if k not in batch]
        raise ValueError(f"batch lacks keys {missing}; build it with pack_shared_prefix")
    ids = batch["shared_input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"batch['shared_input_ids'] must be [1, N], got {tuple(ids.shape)}")
    if int(batch["branch_lengths"].sum()) != ids.shape[1]:
        raise ValueError("batch['branch_lengths'] must add up to the packed length N")
    if max_positions is not None and int(batch["shared_position_ids"].max()) >= max_positions:
        raise ValueError(f"batch holds a position beyond the model's limit of {max_positions}")


def shared_prefix_hidden_states(
    model: nn.Module, batch: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Final hidden states ``[N, H]`` of a prefix-shared packed row (no LM logits)."""
    lm = unwrap(model)
    if getattr(lm.config, "is_encoder_decoder", False):
        raise ValueError("prefix-shared packing supports causal LMs only")
    body = lm.base_model
    if not _accepts_position_ids(type(body)):
        raise ValueError(f"{type(body).__name__} takes no position_ids: it cannot run packed")
    device = lm.device
    implementation = getattr(lm.config, "_attn_implementation", None) or "eager"
    fast = supports_varlen(model) and not _checkpointing(model) and "flash" not in implementation
    kwargs: dict[str, Any] = {
        "input_ids": batch["shared_input_ids"].to(device),
        "position_ids": batch["shared_position_ids"].to(device),
        "use_cache": False,
    }
    if fast:
        kwargs["attention_mask"] = None
    else:
        if "flash" in implementation:
            raise ValueError(
                f"prefix-shared packing needs a mask-taking attention backend; the model uses "
                f"{implementation!r}: pack separate sequences instead (packing.pack_tokenized)"
            )
        mask = shared_prefix_mask(batch).to(device)
        if implementation == "eager":
            additive = torch.zeros(mask.shape, dtype=lm.dtype, device=device)
            mask = additive.masked_fill(~mask, torch.finfo(lm.dtype).min)
        kwargs["attention_mask"] = mask
    with (
        _layout(batch),
        _attention_implementation(model, SHARED_PREFIX_ATTENTION if fast else None),
    ):
        if body is lm:
            return lm(**kwargs, output_hidden_states=True).hidden_states[-1][0]
        return body(**kwargs).last_hidden_state[0]


def shared_prefix_rewards(
    reward_model: nn.Module, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r(x, y_w) [B], r(x, y_l) [B])``: ``RewardModel.preference_rewards`` on this layout."""
    _check(batch, reward_model.max_positions)
    hidden = shared_prefix_hidden_states(reward_model.model, batch)
    return pair_scores(reward_model, hidden, batch["reward_index"], int(batch["n_pairs"]))


def shared_prefix_preference_logps(
    policy: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    recompute: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(chosen_logps, chosen_n, rejected_logps, rejected_n)``: ``Policy.preference_logps`` on
    this layout (summed response-token log-probs, via
    :func:`~oodpl.models.logps.chunked_token_logps`)."""
    _check(batch, policy.max_positions)
    require_logits_from_hidden(policy)
    hidden = shared_prefix_hidden_states(policy.model, batch)
    n = int(batch["n_pairs"])
    sums, counts = policy_response_logps(
        policy,
        hidden,
        batch["shared_input_ids"][0],
        batch["target_index"],
        batch["predictor_index"],
        batch["target_owner"],
        2 * n,
        chunk_size=chunk_size,
        recompute=recompute,
    )
    return sums[:n], counts[:n], sums[n:], counts[n:]


__all__ = [
    "SHARED_KEYS",
    "SHARED_PREFIX_ATTENTION",
    "is_shared_prefix_batch",
    "pack_shared_prefix",
    "packed_layout",
    "shared_prefix_attention_forward",
    "shared_prefix_hidden_states",
    "shared_prefix_mask",
    "shared_prefix_preference_logps",
    "shared_prefix_rewards",
]

"""Forward passes on prefix-shared packed batches (:mod:`oodpl.models.shared_prefix`): rewards
and log-probs with the prompt of each pair run once, equal to the padded path's (tests: ≤ 1e-5 in
float32).

Attention runs per segment ``[c | t_w | t_l]`` with two ``scaled_dot_product_attention`` calls:
``c ⊕ t_w`` causally on itself, and ``t_l`` against ``c ⊕ t_l`` with a lower-right-aligned causal
mask (``[R_l, C + R_l]``, built once per forward): no ``N × N`` mask. Pairs with identical branch
lengths (all of them at fixed lengths) share one batched call per branch. The function is
registered with ``transformers.AttentionInterface`` as ``"oodpl_shared_prefix"`` and selected for
the forward only; under activation checkpointing (the backward re-runs layers outside this
forward) the two-branch mask is passed explicitly as a ``[1, 1, N, N]`` tensor instead.

Rewards (METHODS §1): ``r = w · h + b`` at each sequence's last token (``reward_index``).
Log-probs: ``Σ log softmax(W h[predictor])[token]`` over the response tokens
(``target_index`` / ``predictor_index`` / ``target_owner``), through
:func:`oodpl.models.logps.chunked_token_logps`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface

from oodpl.models.backbone import recomputes_layers, unwrap
from oodpl.models.last_layer import scored_positions_only
from oodpl.models.logps import DEFAULT_CHUNK_SIZE
from oodpl.models.packed_forward import (
    backend_mask,
    check_packable,
    packed_row_hidden_states,
    packed_row_kv,
    pair_scores,
    policy_response_logps,
    require_logits_from_hidden,
    supports_varlen,
)
from oodpl.models.shared_prefix import SHARED_KEYS, is_shared_prefix_batch, shared_prefix_mask

SHARED_PREFIX_ATTENTION = "oodpl_shared_prefix"


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
    check_packable(model)
    implementation = getattr(unwrap(model).config, "_attn_implementation", None) or "eager"
    if "flash" in implementation:
        raise ValueError(
            f"prefix-shared packing needs a mask-taking attention backend; the model uses "
            f"{implementation!r}: pack separate sequences instead (packing.pack_tokenized)"
        )
    fast = supports_varlen(model) and not recomputes_layers(model)
    with _layout(batch):
        return packed_row_hidden_states(
            model,
            batch["shared_input_ids"],
            batch["shared_position_ids"],
            None if fast else backend_mask(model, shared_prefix_mask(batch)),
            implementation=SHARED_PREFIX_ATTENTION if fast else None,
        )


def shared_prefix_rewards(
    reward_model: nn.Module, batch: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r(x, y_w) [B], r(x, y_l) [B])``: ``RewardModel.preference_rewards`` on this layout."""
    _check(batch, reward_model.max_positions)
    index = batch["reward_index"]
    with scored_positions_only(reward_model.model, torch.zeros_like(index), index):
        hidden = shared_prefix_hidden_states(reward_model.model, batch)
    return pair_scores(reward_model, hidden, index, int(batch["n_pairs"]))


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
    "SHARED_PREFIX_ATTENTION",
    "shared_prefix_attention_forward",
    "shared_prefix_hidden_states",
    "shared_prefix_preference_logps",
    "shared_prefix_rewards",
]

"""Forward passes on packed batches (:mod:`oodpl.models.packing`): rewards and log-probs with no
compute spent on padding, numerically the padded path's results (tests: ≤ 1e-5 in float32).

All 2B sequences of a packed batch run as one row of N tokens with per-sequence position ids.
Attention must not cross sequence boundaries; ``attention`` chooses how:

- ``"varlen"``: attention runs per sequence (``scaled_dot_product_attention`` with
  ``is_causal=True`` on each ``cu_seqlens`` segment), through an attention function registered
  with ``transformers.AttentionInterface`` as ``"oodpl_varlen"`` and selected for the duration of
  the packed forward only. Cost ``O(Σ_s L_s²)``, no ``N × N`` mask: the CPU (and any-device)
  padding-free path. Needs plain causal attention (no sliding window, no attention-logit
  soft-capping), which Pythia / GPT-NeoX, Gemma (1), Llama, Qwen2 ... have.
- ``"block_diagonal"``: an explicit ``[1, 1, N, N]`` block-diagonal causal mask (boolean for
  ``sdpa`` / ``flex_attention``, additive 0 / ``finfo.min`` for ``eager``), passed as a 4-D
  ``attention_mask`` that ``transformers`` uses as is. Exact on every backend that takes a mask
  (sliding windows and soft-capping included), but dense attention costs ``O(N²)``: slower than
  padding on CPU for large batches; kept as the exact fallback.
- ``"position_ids"``: no mask; position ids restarting at 0 let ``transformers`` 5.x detect the
  packing (``masking_utils.find_packed_sequence_indices``): it builds the block-diagonal mask itself
  for sdpa / eager / flex, and flash-attention 2/3 run varlen kernels from the boundaries (no
  ``N × N`` mask at all, the GPU path).
- ``"auto"`` (default): ``"position_ids"`` for flash attention, else ``"varlen"`` when the model
  has plain causal attention and no activation checkpointing is active (its backward re-runs
  the layers outside this forward, where the swapped-in attention is gone), else
  ``"block_diagonal"``.

Rewards (METHODS §1): ``r(x, y) = w · h_last + b`` at the last token of each sequence
(``cu_seqlens[s + 1] - 1``). Log-probs: ``Σ_{t ∈ response} log softmax(W h_{t-1})[y_t]`` over the
response tokens only, through :func:`oodpl.models.logps.chunked_token_logps`. Causal LMs only.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AttentionInterface

from oodpl.models.backbone import _accepts_position_ids, recomputes_layers, unwrap
from oodpl.models.last_layer import scored_positions_only
from oodpl.models.logps import DEFAULT_CHUNK_SIZE, chunked_token_logps
from oodpl.models.packing import (
    PACKED_KEYS,
    block_diagonal_causal_mask,
    is_packed_batch,
    sequence_index,
)

AttentionMode = Literal["auto", "varlen", "block_diagonal", "position_ids"]
ATTENTION_MODES = ("auto", "varlen", "block_diagonal", "position_ids")
VARLEN_ATTENTION = "oodpl_varlen"
_FLASH = ("flash_attention_2", "flash_attention_3", "flash_attention_4")


def packed_row_kv(
    name: str,
    usage: str,
    ready: bool,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checks shared by oodpl's packed-row attention functions (one row, no mask, ``ready``:
    the packed layout was provided) and grouped-query heads repeated: ``(key, value)``."""
    if not ready or query.shape[0] != 1:
        raise ValueError(
            f"{name} attention runs oodpl's packed rows only ({usage}), not the model's own forward"
        )
    if attention_mask is not None:
        raise ValueError(f"{name} attention takes no attention_mask")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    return key, value


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each ``cu_seq_lens_q`` segment of a packed row.

    ``query`` ``[1, H, N, D]``, ``key`` / ``value`` ``[1, H_kv, N, D]`` (grouped-query heads are
    repeated); returns ``([1, N, H, D], None)`` as ``transformers`` attention functions do.
    """
    cu = kwargs.get("cu_seq_lens_q")
    key, value = packed_row_kv(
        VARLEN_ATTENTION,
        "batch 1 with cu_seq_lens_q; use oodpl.models.packed_forward",
        cu is not None,
        query,
        key,
        value,
        attention_mask,
    )
    bounds = [int(b) for b in cu.tolist()]
    lengths = [end - start for start, end in itertools.pairwise(bounds)]
    # split (one cat in backward), not slicing (a full-size zero gradient per segment)
    outputs = [
        F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=q.shape[2] > 1, scale=scaling
        )
        for q, k, v in zip(
            query.split(lengths, dim=2),
            key.split(lengths, dim=2),
            value.split(lengths, dim=2),
            strict=True,
        )
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)


def supports_varlen(model: nn.Module) -> bool:
    """Whether the model's attention is plain causal softmax attention (``"varlen"`` is exact)."""
    config = unwrap(model).config.get_text_config()
    if getattr(config, "is_causal", True) is False:
        return False
    for name in ("sliding_window", "attn_logit_softcapping", "layer_types", "alibi"):
        value = getattr(config, name, None)
        if name == "layer_types" and value is not None:
            if any(kind != "full_attention" for kind in value):
                return False
        elif name != "layer_types" and value not in (None, False):
            return False
    return getattr(config, "model_type", "") not in ("bloom", "mpt", "falcon")


def _resolve(model: nn.Module, attention: str) -> str:
    """The concrete mode for ``attention``. ``"varlen"`` swaps the attention implementation for
    the forward only, so it is never used when activation checkpointing would re-run the layers
    in the backward pass (they would then run the model's own attention without a mask)."""
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    implementation = getattr(unwrap(model).config, "_attn_implementation", None) or "eager"
    if attention == "auto":
        if implementation in _FLASH:
            return "position_ids"
        if supports_varlen(model) and not recomputes_layers(model):
            return "varlen"
        return "block_diagonal"
    if attention == "varlen" and not supports_varlen(model):
        raise ValueError(
            f"attention='varlen' needs plain causal attention; {unwrap(model).config.model_type} "
            "has a sliding window / soft-capping / bias: use attention='block_diagonal'"
        )
    if attention == "varlen" and recomputes_layers(model):
        raise ValueError(
            "attention='varlen' cannot run under activation checkpointing (the backward pass "
            "re-runs the layers outside the packed forward): use attention='auto' or "
            "'block_diagonal'"
        )
    return attention


@contextlib.contextmanager
def _attention_implementation(model: nn.Module, name: str | None) -> Iterator[None]:
    """Select attention implementation ``name`` for the duration of the block (None: keep)."""
    config = unwrap(model).config
    saved = config._attn_implementation
    if name is not None:
        config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = saved


def _check_packed(packed: Mapping[str, torch.Tensor], max_positions: int | None) -> None:
    if not is_packed_batch(packed):
        missing = [k for k in (*PACKED_KEYS, "n_pairs") if k not in packed]
        raise ValueError(f"packed lacks keys {missing}; build it with pack_pair_batch")
    ids = packed["packed_input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"packed['packed_input_ids'] must be [1, N], got {tuple(ids.shape)}")
    for key in ("packed_position_ids", "packed_response_mask"):
        if packed[key].shape != ids.shape:
            raise ValueError(f"packed[{key!r}] must have the shape of packed['packed_input_ids']")
    cu = packed["cu_seqlens"]
    if cu.dim() != 1 or int(cu[-1]) != ids.shape[1] or int(cu[0]) != 0:
        raise ValueError("packed['cu_seqlens'] must run from 0 to N (the packed length)")
    if cu.shape[0] - 1 != 2 * int(packed["n_pairs"]):
        raise ValueError("packed['cu_seqlens'] must hold 2 * n_pairs sequences")
    if max_positions is not None:
        longest = int((cu[1:] - cu[:-1]).max())
        if longest > max_positions:
            raise ValueError(
                f"packed holds a sequence of {longest} tokens, beyond the model's limit of "
                f"{max_positions} positions"
            )


def attention_mask_for(
    model: nn.Module, cu_seqlens: torch.Tensor, attention: AttentionMode = "auto"
) -> torch.Tensor | None:
    """The ``attention_mask`` to pass with a packed row (None: varlen / position ids)."""
    attention = _resolve(model, attention)
    lm = unwrap(model)
    implementation = getattr(lm.config, "_attn_implementation", None) or "eager"
    if attention in ("position_ids", "varlen"):
        return None
    if implementation in _FLASH:
        raise ValueError(
            f"attention='block_diagonal' needs a backend that takes a mask, the model uses "
            f"{implementation!r}: use attention='position_ids' (varlen kernels)"
        )
    return backend_mask(model, block_diagonal_causal_mask(cu_seqlens))


def backend_mask(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """A boolean ``[1, 1, N, N]`` mask (True = attend) in the form the model's attention takes:
    additive ``0`` / ``finfo.min`` for ``eager``, boolean for ``sdpa`` / ``flex_attention``."""
    lm = unwrap(model)
    allowed = allowed.to(lm.device)
    if (getattr(lm.config, "_attn_implementation", None) or "eager") == "eager":
        additive = torch.zeros(allowed.shape, dtype=lm.dtype, device=allowed.device)
        return additive.masked_fill(~allowed, torch.finfo(lm.dtype).min)
    return allowed


def check_packable(model: nn.Module) -> None:
    """A packed row needs a causal LM whose body takes ``position_ids``."""
    lm = unwrap(model)
    if getattr(lm.config, "is_encoder_decoder", False):
        raise ValueError("packing supports causal LMs only; use length bucketing for seq2seq")
    if not _accepts_position_ids(type(lm.base_model)):
        raise ValueError(
            f"{type(lm.base_model).__name__} takes no position_ids: it cannot run packed"
        )


def packed_row_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    implementation: str | None = None,
    **attention_kwargs: Any,
) -> torch.Tensor:
    """Final hidden states ``[N, H]`` of one packed row ``[1, N]`` (no LM logits), with the
    attention implementation ``implementation`` selected for this forward only (None: keep)."""
    lm = unwrap(model)
    body = lm.base_model
    kwargs: dict[str, Any] = {
        "input_ids": input_ids.to(lm.device),
        "position_ids": position_ids.to(lm.device),
        "attention_mask": attention_mask,
        "use_cache": False,
        **attention_kwargs,
    }
    with _attention_implementation(model, implementation):
        if body is lm:
            return lm(**kwargs, output_hidden_states=True).hidden_states[-1][0]
        return body(**kwargs).last_hidden_state[0]


def packed_hidden_states(
    model: nn.Module, packed: Mapping[str, torch.Tensor], *, attention: AttentionMode = "auto"
) -> torch.Tensor:
    """Final hidden states ``[N, H]`` of the packed row (no LM logits)."""
    check_packable(model)
    mode = _resolve(model, attention)
    extra: dict[str, Any] = {}
    if mode == "varlen":
        cu = packed["cu_seqlens"].to(device=unwrap(model).device, dtype=torch.int32)
        longest = int((cu[1:] - cu[:-1]).max())
        extra = {
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": longest,
            "max_length_k": longest,
        }
    return packed_row_hidden_states(
        model,
        packed["packed_input_ids"],
        packed["packed_position_ids"],
        attention_mask_for(model, packed["cu_seqlens"], mode),
        implementation=VARLEN_ATTENTION if mode == "varlen" else None,
        **extra,
    )


def require_logits_from_hidden(policy: nn.Module) -> None:
    """Packed log-probs apply the LM head to selected hidden states: the policy must reproduce
    its head transform (``Policy.logits_from_hidden``)."""
    if not getattr(policy, "logits_from_hidden", True):
        raise ValueError(
            "policy.logits_from_hidden is False (its LM-head transform is not reproduced): "
            "use the padded path (policy.preference_logps)"
        )


def pair_scores(
    reward_model: nn.Module, hidden: torch.Tensor, last: torch.Tensor, n_pairs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The value head on the hidden states at ``last`` (chosen sequences first): ``([B], [B])``."""
    head = reward_model.value_head
    scores = head(hidden[last.to(hidden.device)].to(head.weight.dtype)).squeeze(-1)
    return scores[:n_pairs], scores[n_pairs:]


def policy_response_logps(
    policy: nn.Module,
    hidden: torch.Tensor,
    ids: torch.Tensor,
    targets: torch.Tensor,
    predictors: torch.Tensor,
    owner: torch.Tensor,
    n_sequences: int,
    *,
    chunk_size: int,
    recompute: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ log π(ids[t] | h[p]) per sequence, token count per sequence)`` over the scored
    response tokens ``targets`` (predicted at ``predictors``, owned by sequence ``owner``)."""
    device = hidden.device
    logps = chunked_token_logps(
        policy.model,
        hidden[predictors.to(device)],
        ids.to(device)[targets.to(device)],
        chunk_size=chunk_size,
        recompute=recompute,
    )
    owner = owner.to(device)
    sums = torch.zeros(n_sequences, dtype=logps.dtype, device=device).index_add(0, owner, logps)
    counts = torch.zeros(n_sequences, dtype=torch.long, device=device).index_add(
        0, owner, torch.ones_like(owner)
    )
    return sums, counts


def packed_rewards(
    reward_model: nn.Module,
    packed: Mapping[str, torch.Tensor],
    *,
    attention: AttentionMode = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r(x, y_w) [B], r(x, y_l) [B])`` of a packed batch: RewardModel.preference_rewards, packed.

    ``reward_model`` is an :class:`oodpl.models.reward_model.RewardModel`.
    """
    _check_packed(packed, reward_model.max_positions)
    last = (packed["cu_seqlens"][1:] - 1).long()
    with scored_positions_only(reward_model.model, torch.zeros_like(last), last):
        hidden = packed_hidden_states(reward_model.model, packed, attention=attention)
    return pair_scores(reward_model, hidden, last, int(packed["n_pairs"]))


def packed_logps(
    policy: nn.Module,
    packed: Mapping[str, torch.Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    attention: AttentionMode = "auto",
    recompute: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence ``(Σ_t log π(y_t | x, y_<t) [2B], |y| [2B])``, chosen sequences first.

    ``policy`` is an :class:`oodpl.models.policy.Policy`; ``chunk_size`` / ``recompute`` go to
    :func:`~oodpl.models.logps.chunked_token_logps`.
    """
    _check_packed(packed, policy.max_positions)
    require_logits_from_hidden(policy)
    hidden = packed_hidden_states(policy.model, packed, attention=attention)
    positions = torch.nonzero(packed["packed_response_mask"][0].bool()).flatten()
    cu = packed["cu_seqlens"]
    return policy_response_logps(
        policy,
        hidden,
        packed["packed_input_ids"][0],
        positions,
        positions - 1,
        sequence_index(cu)[positions],
        cu.shape[0] - 1,
        chunk_size=chunk_size,
        recompute=recompute,
    )


def packed_preference_logps(
    policy: nn.Module,
    packed: Mapping[str, torch.Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    attention: AttentionMode = "auto",
    recompute: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(chosen_logps, chosen_n, rejected_logps, rejected_n)``: Policy.preference_logps, packed."""
    sums, n_tokens = packed_logps(
        policy, packed, chunk_size=chunk_size, attention=attention, recompute=recompute
    )
    n = int(packed["n_pairs"])
    return sums[:n], n_tokens[:n], sums[n:], n_tokens[n:]


__all__ = [
    "ATTENTION_MODES",
    "VARLEN_ATTENTION",
    "attention_mask_for",
    "backend_mask",
    "check_packable",
    "packed_hidden_states",
    "packed_logps",
    "packed_preference_logps",
    "packed_rewards",
    "packed_row_hidden_states",
    "packed_row_kv",
    "pair_scores",
    "policy_response_logps",
    "require_logits_from_hidden",
    "supports_varlen",
    "varlen_attention_forward",
]

"""Chunked LM head + log-softmax: per-token log-probs without a ``[tokens × vocab]`` float32 tensor.

For the N selected positions (response tokens only, METHODS §1) with hidden states ``h_i`` and
targets ``y_i``::

    log π(y_i | ·) = log softmax(head(h_i))[y_i]            (head = :func:`output_logits`)

computed ``chunk_size`` rows at a time: each chunk's logits are cast to float32 (float64 for a
float64 model), log-softmaxed, the target entries gathered, and the chunk's logits dropped. Peak
extra memory is ``O(chunk_size × V)`` instead of ``O(N × V)``. When gradients are needed the
chunks are *recomputed* in the backward pass (activation checkpointing, ``recompute=True``), so
autograd does not keep every chunk's logits alive either; results and gradients are the same as
the unchunked computation up to float rounding (the same ops are applied row by row).

:class:`~oodpl.models.policy.Policy` already selects the response positions before its head
(``Policy.token_logps``); it can swap its ``output_logits`` + ``log_softmax`` + ``gather`` lines for
``chunked_token_logps(self.model, hidden[targets_mask], targets)``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from oodpl.models.backbone import head_dtype, output_logits

DEFAULT_CHUNK_SIZE = 512
RECOMPUTE_MIN_ELEMENTS = 1 << 26
"""``recompute=None`` recomputes chunks only when the whole ``[N × V]`` float32 log-softmax would
hold at least this many elements (256 MiB): below it, storing the chunks costs less memory than
the recomputation costs time (one more LM-head matmul per chunk, ~5-15 % of a tiny model's
step on CPU)."""


def _chunk_logps(model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = output_logits(model, hidden)
    logps = torch.log_softmax(logits.to(head_dtype(logits.dtype)), dim=-1)
    return logps.gather(-1, targets[:, None]).squeeze(-1)


def _vocab_size(model: nn.Module) -> int | None:
    head = getattr(model, "get_output_embeddings", lambda: None)()
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None


def chunked_token_logps(
    model: nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    recompute: bool | None = None,
) -> torch.Tensor:
    """``log softmax(head(hidden))[targets]`` row by row, ``chunk_size`` rows at a time -> ``[N]``.

    Args:
        model: the (possibly peft-wrapped) ``transformers`` LM whose head to apply.
        hidden: ``[N, H]`` final hidden states of the positions *predicting* ``targets``.
        targets: ``[N]`` token ids.
        chunk_size: rows per chunk (any int >= 1; need not divide N).
        recompute: recompute each chunk's logits in the backward pass instead of storing them
            (default: when gradients flow and ``N × V >= RECOMPUTE_MIN_ELEMENTS``). Set False
            under ``torch.func`` transforms that do not support checkpointing.
    """
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 2:
        raise ValueError("hidden must be a 2-D tensor [N, H]")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1:
        raise ValueError("targets must be a 1-D tensor [N]")
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(
            f"targets has {targets.shape[0]} entries but hidden has {hidden.shape[0]} rows"
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex:
        raise ValueError(f"targets must hold integers, got {targets.dtype}")
    targets = targets.to(hidden.device).long()
    if recompute is None:
        vocab = _vocab_size(model)
        recompute = torch.is_grad_enabled() and (
            vocab is None or hidden.shape[0] * vocab >= RECOMPUTE_MIN_ELEMENTS
        )
    pieces = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if recompute:
            pieces.append(checkpoint(_chunk_logps, model, h, t, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(model, h, t))
    if not pieces:
        return torch.zeros(0, dtype=head_dtype(hidden.dtype), device=hidden.device)
    return torch.cat(pieces)


__all__ = ["DEFAULT_CHUNK_SIZE", "RECOMPUTE_MIN_ELEMENTS", "chunked_token_logps"]

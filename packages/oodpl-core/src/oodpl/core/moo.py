"""Multi-objective reweighting of per-source reward losses: MORE ([MORE], METHODS §5).

MORE trains one reward model on K preference sources with the loss

    L(θ) = Σ_i λ_i · L_BT(θ; B_i),       λ ∈ Δ^{K-1} (the probability simplex),

where ``λ`` is the *min-norm* point of the convex hull of the per-source gradients,

    λ = argmin_{λ ∈ Δ} ‖Σ_i λ_i g_i‖²,

(MGDA's common descent direction), recomputed every step and treated as a constant in the
backward pass.

Getting ``g_i`` (METHODS §5: gradients w.r.t. the *reward head only*, from detached pooled
features). With ``features`` the pooled hidden states of one batch holding ``b`` pairs per source::

    feats = features.detach()                       # no graph into the backbone
    losses = torch.stack([                           # L_BT(B_i) through the head only
        bradley_terry_loss(head(feats_chosen[i]).squeeze(-1), head(feats_rejected[i]).squeeze(-1))
        for i in range(K)
    ])
    grads = source_gradients(losses, list(head.parameters()))   # Tensor[K, D]
    grads = momentum.update(grads)                              # optional, GradientMomentum
    lam = min_norm_weights(grads)                               # Tensor[K] on the simplex
    loss = more_loss(full_graph_losses, lam)                    # Σ λ_i L_i, λ detached

where ``full_graph_losses`` are the same K losses computed from the *non-detached* features so the
backbone is trained too. The head is small (hidden size + 1 parameters), so the K gradients and
their K×K Gram matrix cost almost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from oodpl.core._validation import (
    check_in_interval,
    check_positive,
    check_positive_int,
    check_tensor,
)

__all__ = [
    "GradientMomentum",
    "flatten_gradients",
    "min_norm_weights",
    "more_loss",
    "source_gradients",
]

# A pair whose difference has squared norm below this fraction of v11 + v22 is treated as equal.
_DEGENERATE_RELATIVE = 1e-12
# Norms at or below this are treated as zero when normalising momentum buffers.
_ZERO_NORM = 1e-12


def _min_norm_pair(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """Closed-form min-norm point on the segment between two vectors (METHODS §5).

    ``min_{γ∈[0,1]} ‖γ u_1 + (1−γ) u_2‖²`` with ``v11 = ‖u_1‖²``, ``v12 = ⟨u_1,u_2⟩``,
    ``v22 = ‖u_2‖²`` is solved by ``γ = clip((v22 − v12)/(v11 + v22 − 2 v12), 0, 1)``.
    The denominator is ``‖u_1 − u_2‖² ≥ 0``; when it vanishes the two vectors are equal, every
    γ is optimal and γ = ½ is returned. Returns ``(γ, cost)`` with the squared norm at γ.
    """
    denominator = v11 + v22 - 2.0 * v12
    scale = max(abs(v11) + abs(v22), 1e-300)
    if denominator <= _DEGENERATE_RELATIVE * scale:
        gamma = 0.5
    else:
        gamma = min(max((v22 - v12) / denominator, 0.0), 1.0)
    cost = gamma * gamma * v11 + 2.0 * gamma * (1.0 - gamma) * v12 + (1.0 - gamma) ** 2 * v22
    return gamma, max(cost, 0.0)


def _check_gradients(gradients: object) -> Tensor:
    """``Tensor[K, D]`` with K, D >= 1, real dtype, finite (empty -> ValueError naming it)."""
    return check_tensor("gradients", gradients, ndim=2, floating=False, finite=True)


def min_norm_weights(gradients: Tensor, *, tol: float = 1e-5, max_iter: int = 1000) -> Tensor:
    """Min-norm weights ``λ = argmin_{λ ∈ Δ^{K-1}} ‖Σ_i λ_i g_i‖²`` ([MORE], METHODS §5).

    Args:
        gradients: ``Tensor[K, D]``, row ``i`` is the (flattened) gradient ``g_i`` of source ``i``.
            Any real dtype; the solver works in float64 on the Gram matrix ``V = G Gᵀ``.
        tol: Frank–Wolfe stops when ``‖λ_{t+1} − λ_t‖₁ < tol``.
        max_iter: at most this many Frank–Wolfe steps.

    Returns:
        ``Tensor[K]`` on the simplex (non-negative, sums to 1), same dtype (float64 for integer
        input) and device as ``gradients``, detached.

    Algorithm:
        - ``K = 1``: ``λ = (1,)``.
        - ``K = 2``: ``γ = clip((v22 − v12)/(v11 + v22 − 2 v12), 0, 1)``, ``λ = (γ, 1 − γ)``
          (``γ = ½`` when ``g_1 = g_2``, where every γ is optimal).
        - ``K > 2``: start from the best pair (the two-point solution of lowest cost over all
          pairs); then Frank–Wolfe: with ``u = Σ λ_j g_j``, pick the vertex
          ``t = argmin_i (Vλ)_i = argmin_i ⟨g_i, u⟩`` and set ``λ ← γ λ + (1 − γ) e_t`` where γ
          is the two-point formula for the segment ``[u, g_t]`` (``v11 = λᵀVλ``,
          ``v12 = (Vλ)_t``, ``v22 = V_tt``), the MinNormSolver of Sener & Koltun (2018).
    """
    grads = _check_gradients(gradients)
    tol = check_positive("tol", tol)
    max_iter = check_positive_int("max_iter", max_iter)
    out_dtype = grads.dtype if grads.is_floating_point() else torch.float64
    n_sources = grads.shape[0]

    if n_sources == 1:
        return torch.ones(1, dtype=out_dtype, device=grads.device)

    flat = grads.detach().to(torch.float64)
    gram_tensor = flat @ flat.T
    if not bool(torch.isfinite(gram_tensor).all()):
        raise ValueError("gradients overflow float64 in the Gram matrix; rescale them")
    gram: list[list[float]] = gram_tensor.cpu().tolist()

    weights = _frank_wolfe(gram, tol=tol, max_iter=max_iter)
    return torch.tensor(weights, dtype=torch.float64, device=grads.device).to(out_dtype)


def _best_pair(gram: list[list[float]]) -> list[float]:
    n = len(gram)
    best_cost, best = math.inf, (0, 1, 0.5)
    for i in range(n):
        for j in range(i + 1, n):
            gamma, cost = _min_norm_pair(gram[i][i], gram[i][j], gram[j][j])
            if cost < best_cost:
                best_cost, best = cost, (i, j, gamma)
    i, j, gamma = best
    weights = [0.0] * n
    weights[i] = gamma
    weights[j] = 1.0 - gamma
    return weights


def _frank_wolfe(gram: list[list[float]], *, tol: float, max_iter: int) -> list[float]:
    """Frank–Wolfe with exact two-point line search on ``λᵀVλ`` over the simplex."""
    n = len(gram)
    weights = _best_pair(gram)
    if n == 2:
        return weights
    # gram_weights = V λ, maintained incrementally: V(γλ + (1−γ)e_t) = γ Vλ + (1−γ) V[:, t].
    gram_weights = [sum(gram[i][j] * weights[j] for j in range(n)) for i in range(n)]
    for _ in range(max_iter):
        vertex = min(range(n), key=gram_weights.__getitem__)
        v11 = sum(w * gw for w, gw in zip(weights, gram_weights, strict=True))
        gamma, _ = _min_norm_pair(v11, gram_weights[vertex], gram[vertex][vertex])
        new_weights = [gamma * w for w in weights]
        new_weights[vertex] += 1.0 - gamma
        change = sum(abs(a - b) for a, b in zip(new_weights, weights, strict=True))
        gram_weights = [
            gamma * gw + (1.0 - gamma) * gram[i][vertex] for i, gw in enumerate(gram_weights)
        ]
        weights = new_weights
        if change < tol:
            break
    total = sum(weights)
    return [max(w, 0.0) / total for w in weights]


def flatten_gradients(gradients: Sequence[Tensor | Mapping[str, Tensor]]) -> Tensor:
    """Stack per-source gradients into the ``Tensor[K, D]`` that :func:`min_norm_weights` takes.

    Each entry is either one tensor (any shape, flattened) or a mapping name -> tensor (e.g. the
    reward head's parameter gradients), flattened in the key order of the *first* entry. Every
    entry must have the same total size (and, for mappings, the same keys and shapes). Values are
    detached; dtypes are promoted to a common floating type.
    """
    if isinstance(gradients, (Tensor, Mapping)) or not isinstance(gradients, Sequence):
        raise TypeError(
            "gradients must be a sequence (one entry per source) of tensors or name->tensor "
            f"mappings, got {type(gradients).__name__}"
        )
    if len(gradients) == 0:
        raise ValueError("gradients is empty; need one entry per source (K >= 1)")
    first = gradients[0]
    keys = list(first.keys()) if isinstance(first, Mapping) else None
    rows: list[Tensor] = []
    for index, entry in enumerate(gradients):
        name = f"gradients[{index}]"
        if keys is not None:
            rows.append(_flatten_mapping(name, entry, keys, first))
        else:
            if not isinstance(entry, Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor like gradients[0], got {type(entry).__name__}"
                )
            rows.append(entry.detach().reshape(-1))
        if rows[-1].numel() != rows[0].numel():
            raise ValueError(
                f"{name} has {rows[-1].numel()} elements but gradients[0] has {rows[0].numel()}"
            )
    dtype = rows[0].dtype
    for row in rows[1:]:
        dtype = torch.promote_types(dtype, row.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    stacked = torch.stack([row.to(dtype) for row in rows])
    return _check_gradients(stacked)


def _flatten_mapping(name: str, entry: object, keys: list[str], first: Mapping) -> Tensor:
    if not isinstance(entry, Mapping):
        raise TypeError(f"{name} must be a mapping like gradients[0], got {type(entry).__name__}")
    if set(entry.keys()) != set(keys):
        missing = sorted(set(keys) - set(entry.keys()))
        extra = sorted(set(entry.keys()) - set(keys))
        raise ValueError(f"{name} keys differ from gradients[0]: missing {missing}, extra {extra}")
    parts = []
    for key in keys:
        value = entry[key]
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if value.shape != first[key].shape:
            raise ValueError(
                f"{name}[{key!r}] has shape {tuple(value.shape)}, gradients[0][{key!r}] has "
                f"{tuple(first[key].shape)}"
            )
        parts.append(value.detach().reshape(-1))
    if not parts:
        raise ValueError(f"{name} is an empty mapping; need at least one gradient tensor")
    dtype = parts[0].dtype
    for part in parts[1:]:
        dtype = torch.promote_types(dtype, part.dtype)
    return torch.cat([part.to(dtype) for part in parts])


def source_gradients(per_source_losses: Tensor, parameters: Sequence[Tensor]) -> Tensor:
    """Gradients ``g_i = ∇_w L_i`` of each source's loss w.r.t. ``parameters``: ``Tensor[K, D]``.

    ``per_source_losses`` is a 1-D tensor of K scalar losses sharing one graph (e.g. the K
    Bradley–Terry losses of the reward head on detached features, METHODS §5); ``parameters`` are
    the tensors to differentiate (the reward head's). The graph is retained between the K calls
    and freed by none of them, so it can still be used afterwards. A parameter a loss does not
    depend on contributes zeros. The result is detached.
    """
    losses = check_tensor("per_source_losses", per_source_losses, ndim=1)
    if isinstance(parameters, Tensor) or not isinstance(parameters, Sequence):
        raise TypeError(
            f"parameters must be a sequence of tensors, got {type(parameters).__name__}"
        )
    params = list(parameters)
    if not params:
        raise ValueError("parameters is empty; need the tensors to differentiate (the reward head)")
    for index, param in enumerate(params):
        if not isinstance(param, Tensor):
            raise TypeError(
                f"parameters[{index}] must be a torch.Tensor, got {type(param).__name__}"
            )
        if not param.requires_grad:
            raise ValueError(f"parameters[{index}] must be a tensor with requires_grad=True")
    if not losses.requires_grad:
        raise ValueError("per_source_losses does not require grad; it must depend on parameters")
    rows = []
    for index in range(losses.shape[0]):
        grads = torch.autograd.grad(losses[index], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).detach().reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
        )
    return _check_gradients(torch.stack(rows))


class GradientMomentum:
    """Exponential moving average of per-source gradients ([MORE], METHODS §5).

    ``g̃_i ← (1 − a) g̃_i + a g_i`` with buffers starting at zero (``a = momentum``; ``a = 1``
    keeps only the current gradient). With ``normalize=True`` :meth:`update` returns
    ``g̃_i / ‖g̃_i‖₂`` (a zero buffer stays zero), so the min-norm weights respond to gradient
    *directions* rather than to sources whose loss scale happens to be large. The buffers keep
    the un-normalised average; normalisation only affects what :meth:`update` returns.

    Args:
        n_sources: K, the number of rows every update must have.
        dim: D, the gradient size; ``None`` takes it from the first update.
        momentum: ``a`` in ``(0, 1]``.
        normalize: l2-normalise each returned row.
    """

    def __init__(
        self,
        n_sources: int,
        dim: int | None = None,
        *,
        momentum: float = 0.1,
        normalize: bool = True,
    ) -> None:
        self.n_sources = check_positive_int("n_sources", n_sources)
        self.dim = None if dim is None else check_positive_int("dim", dim)
        self.momentum = check_in_interval("momentum", momentum, 0.0, 1.0, low_closed=False)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
        self.normalize = normalize
        self.n_updates = 0
        self._buffer: Tensor | None = None

    @property
    def buffer(self) -> Tensor | None:
        """A copy of the current (un-normalised) averages ``g̃``, ``None`` before any update."""
        return None if self._buffer is None else self._buffer.clone()

    def reset(self) -> None:
        """Zero the buffers (the next update starts again from ``g̃ = 0``)."""
        self._buffer = None
        self.n_updates = 0

    def update(self, grads: Tensor) -> Tensor:
        """Fold ``grads`` (``Tensor[K, D]``) into the averages and return ``Tensor[K, D]``."""
        grads = _check_gradients(grads)
        if grads.shape[0] != self.n_sources:
            raise ValueError(f"grads has {grads.shape[0]} rows but n_sources={self.n_sources}")
        if self.dim is not None and grads.shape[1] != self.dim:
            raise ValueError(f"grads has {grads.shape[1]} columns but dim={self.dim}")
        grads = grads.detach()
        if not grads.is_floating_point():
            grads = grads.to(torch.get_default_dtype())
        if self._buffer is None:
            self.dim = grads.shape[1]
            self._buffer = torch.zeros_like(grads)
        grads = grads.to(dtype=self._buffer.dtype, device=self._buffer.device)
        self._buffer = (1.0 - self.momentum) * self._buffer + self.momentum * grads
        self.n_updates += 1
        if not self.normalize:
            return self._buffer.clone()
        norms = torch.linalg.vector_norm(self._buffer, dim=1, keepdim=True)
        safe = torch.where(norms > _ZERO_NORM, norms, torch.ones_like(norms))
        return torch.where(norms > _ZERO_NORM, self._buffer / safe, torch.zeros_like(self._buffer))


def more_loss(per_source_losses: Tensor, weights: Tensor) -> Tensor:
    """MORE objective ``L = Σ_i λ_i L_i`` with ``λ`` detached ([MORE], METHODS §5).

    ``per_source_losses``: ``Tensor[K]`` (e.g. the Bradley–Terry loss of each source's part of
    the batch); ``weights``: ``Tensor[K]``, finite and non-negative, usually from
    :func:`min_norm_weights` (or ``λ_i ∝ |D_i|`` for the MultiTask baseline). ``λ`` is a
    constant in the backward pass: ``∂L/∂θ = Σ_i λ_i ∂L_i/∂θ``; no gradient reaches ``weights``.
    """
    losses = check_tensor("per_source_losses", per_source_losses, ndim=1)
    lam = check_tensor("weights", weights, ndim=1)
    if lam.shape != losses.shape:
        raise ValueError(
            f"weights has shape {tuple(lam.shape)} but per_source_losses has {tuple(losses.shape)}"
        )
    lam = lam.detach()
    if bool((lam < 0).any()):
        raise ValueError(f"weights must be >= 0, got {lam.tolist()}")
    return (lam.to(dtype=losses.dtype, device=losses.device) * losses).sum()

"""Arithmetic on parameter dicts (``Params = dict[str, Tensor]``).

Hypergradient code never looks inside a model: it sees named tensors only (LoRA factors of a
transformer, the value head of a reward model, or a 3-parameter toy), so these helpers make no
assumption about shapes, and the dict's insertion order is the canonical key order everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real

import torch
from torch import Tensor

Params = dict[str, Tensor]

__all__ = [
    "Params",
    "add",
    "all_finite",
    "check_int",
    "check_params",
    "check_positive",
    "check_same_structure",
    "clone",
    "detach",
    "dot",
    "flatten",
    "leaf_copy",
    "norm",
    "numel",
    "scale",
    "sub",
    "unflatten",
    "zeros_like",
]


def check_params(params: object, name: str) -> Params:
    """Validate a parameter dict and return it as a plain ``dict``.

    Raises ``TypeError``/``ValueError`` naming ``name`` (and the offending key) when ``params`` is
    not a non-empty mapping from ``str`` to floating-point tensors.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"{name} must be a dict[str, Tensor], got {type(params).__name__}")
    if len(params) == 0:
        raise ValueError(f"{name} must hold at least one tensor, got an empty dict")
    out: Params = {}
    for key, value in params.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be str, got {type(key).__name__} ({key!r})")
        if not isinstance(value, Tensor):
            raise TypeError(f"{name}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name}[{key!r}] must have a floating-point dtype, got {value.dtype}")
        out[key] = value
    return out


def check_same_structure(a: Params, b: Params, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same keys and shapes."""
    if set(a) != set(b):
        missing = sorted(set(a) - set(b))
        extra = sorted(set(b) - set(a))
        raise ValueError(
            f"{name_b} must have the same keys as {name_a}: missing {missing}, unexpected {extra}"
        )
    for key in a:
        if a[key].shape != b[key].shape:
            raise ValueError(
                f"{name_b}[{key!r}] has shape {tuple(b[key].shape)}, "
                f"expected {tuple(a[key].shape)} as in {name_a}"
            )


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_int(value: object, name: str, *, minimum: int) -> int:
    """Return ``value`` after checking it is an ``int`` >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def detach(params: Params) -> Params:
    """Detached views (no copy) of every tensor."""
    return {k: v.detach() for k, v in params.items()}


def clone(params: Params) -> Params:
    """Detached copies of every tensor."""
    return {k: v.detach().clone() for k, v in params.items()}


def leaf_copy(params: Params) -> Params:
    """Detached leaf tensors with ``requires_grad=True`` (share storage with ``params``)."""
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def zeros_like(params: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in params.items()}


def add(a: Params, b: Params, alpha: float = 1.0) -> Params:
    """``a + alpha * b`` key by key (keys of ``a``)."""
    return {k: a[k] + alpha * b[k] for k in a}


def sub(a: Params, b: Params) -> Params:
    """``a - b`` key by key (keys of ``a``)."""
    return {k: a[k] - b[k] for k in a}


def scale(params: Params, factor: float) -> Params:
    return {k: factor * v for k, v in params.items()}


def dot(a: Params, b: Params) -> Tensor:
    """``Σ_k <a[k], b[k]>`` over the keys of ``a`` (a 0-dim tensor; dtypes promote)."""
    total: Tensor | None = None
    for key, value in a.items():
        term = torch.sum(value * b[key])
        total = term if total is None else total + term.to(total.device)
    if total is None:
        raise ValueError("dot of empty parameter dicts")
    return total


def norm(params: Params) -> Tensor:
    """Euclidean norm of all entries together (accumulated in float64 for stability)."""
    total = sum(float(torch.sum(v.detach().double() ** 2)) for v in params.values())
    return torch.tensor(math.sqrt(total), dtype=torch.float64)


def numel(params: Params) -> int:
    return sum(v.numel() for v in params.values())


def all_finite(params: Params) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in params.values())


def flatten(params: Params) -> Tensor:
    """Concatenate every tensor (in key order) into one 1-D tensor; dtypes promote."""
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflatten(vector: Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten`: split ``vector`` into tensors shaped and typed like ``like``."""
    if vector.dim() != 1 or vector.numel() != numel(like):
        raise ValueError(
            f"vector must be 1-D with {numel(like)} entries, got shape {tuple(vector.shape)}"
        )
    out: Params = {}
    offset = 0
    for key, ref in like.items():
        size = ref.numel()
        out[key] = vector[offset : offset + size].reshape(ref.shape).to(ref.dtype)
        offset += size
    return out

"""Shared input checks for ``oodpl.core`` (losses, metrics, calibration, hypergradients, ...).

Every check takes the *argument name* as its first parameter and puts it in the error message, so a
caller can write ``check_tensor("chosen_rewards", chosen_rewards)`` and the user reads
``chosen_rewards must be finite; found 1 NaN and 0 inf value(s)``.

Conventions
-----------
- Wrong *type* (not a tensor, not a number, not a str) -> ``TypeError``.
- Wrong *value* (empty, wrong shape, NaN/inf, out of range, unknown option) -> ``ValueError``.
- Checks return the validated value (a number is returned as a python ``float``/``int``), so they
  can be used inline.
- Finiteness checks read tensor values (one host sync per check); they never touch autograd.

Public API (small on purpose):

``check_tensor(name, t, *, ndim=1, floating=True, allow_empty=False, finite=True)``
``check_finite(name, t)``
``check_same_shape(**named)``
``check_real(name, value)`` / ``check_positive(name, value)`` / ``check_non_negative(name, value)``
``check_in_interval(name, value, low, high, *, low_closed=True, high_closed=True)``
``check_positive_int(name, value)``
``check_choice(name, value, choices)``
``check_token_counts(name, n_tokens)``
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Real

import torch
from torch import Tensor

__all__ = [
    "check_choice",
    "check_finite",
    "check_in_interval",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
    "check_real",
    "check_same_shape",
    "check_tensor",
    "check_token_counts",
]


def check_finite(name: str, t: Tensor) -> Tensor:
    """Raise ``ValueError`` naming ``name`` if ``t`` holds a NaN or an infinity; return ``t``."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex():
        values = t.detach()
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(values).sum())
            n_inf = int(torch.isinf(values).sum())
            raise ValueError(f"{name} must be finite; found {n_nan} NaN and {n_inf} inf value(s)")
    return t


def check_tensor(
    name: str,
    t: object,
    *,
    ndim: int | None = 1,
    floating: bool = True,
    allow_empty: bool = False,
    finite: bool = True,
) -> Tensor:
    """Validate a tensor argument and return it unchanged.

    - ``TypeError`` if ``t`` is not a ``torch.Tensor``, or (``floating=True``) not floating point.
    - ``ValueError`` if ``t.ndim != ndim`` (skip with ``ndim=None``), if it has no elements (unless
      ``allow_empty``), or (``finite=True``) if it holds NaN/inf.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dtype == torch.bool:
        raise TypeError(f"{name} must be a numeric tensor, got dtype torch.bool")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)} ({t.ndim}-D)"
        )
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); need at least one element")
    if finite:
        check_finite(name, t)
    return t


def check_same_shape(**named: Tensor) -> None:
    """Raise ``ValueError`` naming every argument if the given tensors differ in shape.

    ``check_same_shape(chosen_rewards=a, rejected_rewards=b)``.
    """
    shapes = {key: tuple(value.shape) for key, value in named.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{key} {shape}" for key, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listing}; these arguments must have the same shape")


def _as_real(name: str, value: object) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got bool")
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    return number


def check_real(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number (or a one-element tensor)."""
    return _as_real(name, value)


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number ``> 0``; else raise naming it."""
    number = _as_real(name, value)
    if number <= 0:
        raise ValueError(f"{name} must be > 0, got {number}")
    return number


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number ``>= 0``; else raise naming it."""
    number = _as_real(name, value)
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def check_in_interval(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    low_closed: bool = True,
    high_closed: bool = True,
) -> float:
    """Return ``value`` as a float if it lies in the interval; e.g. ``[0, 0.5)`` with
    ``high_closed=False``. The message shows the interval in bracket notation."""
    number = _as_real(name, value)
    above = number >= low if low_closed else number > low
    below = number <= high if high_closed else number < high
    if not (above and below):
        interval = f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
        raise ValueError(f"{name} must lie in {interval}, got {number}")
    return number


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` (not bool) ``>= 1``; else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise naming it and listing options."""
    options = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {options}; got {type(value).__name__}")
    if value not in options:
        raise ValueError(f"unknown {name} {value!r}; expected one of {options}")
    return value


def check_token_counts(name: str, n_tokens: object) -> Tensor:
    """Validate a 1-D tensor of response-token counts: integer or float dtype, finite, all ``> 0``.

    A count of zero would divide by zero in a length-normalised log-probability (METHODS notation
    ``ℓ̄ = logπ/|y|``), so it is rejected here rather than becoming inf/NaN later.
    """
    counts = check_tensor(name, n_tokens, ndim=1, floating=False)
    if not bool((counts.detach() > 0).all()):
        n_bad = int((counts.detach() <= 0).sum())
        raise ValueError(f"{name} must be > 0 everywhere; found {n_bad} value(s) <= 0")
    return counts

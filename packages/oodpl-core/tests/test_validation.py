"""Shared input checks: each one names the offending argument in its message."""

from __future__ import annotations

import math

import pytest
import torch

from oodpl.core._validation import (
    check_choice,
    check_finite,
    check_in_interval,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_real,
    check_same_shape,
    check_tensor,
    check_token_counts,
)

F64 = torch.float64


def test_check_tensor_accepts_and_returns_the_same_object() -> None:
    t = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    assert check_tensor("scores", t) is t


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        ([1.0, 2.0], TypeError, "torch.Tensor"),
        (torch.tensor([1, 2]), TypeError, "floating-point"),
        (torch.tensor([[1.0]]), ValueError, "dimension"),
        (torch.tensor([]), ValueError, "empty"),
        (torch.tensor([1.0, math.nan]), ValueError, "1 NaN"),
        (torch.tensor([math.inf, -math.inf]), ValueError, "2 inf"),
    ],
)
def test_check_tensor_rejects_bad_tensors(value: object, error: type, fragment: str) -> None:
    with pytest.raises(error, match="my_scores") as info:
        check_tensor("my_scores", value)
    assert fragment in str(info.value)


def test_check_tensor_options() -> None:
    assert check_tensor("x", torch.tensor([]), allow_empty=True).numel() == 0
    assert check_tensor("x", torch.ones(2, 3), ndim=None).shape == (2, 3)
    assert check_tensor("x", torch.tensor([1, 2]), floating=False).dtype == torch.int64
    assert check_tensor("x", torch.tensor([math.nan]), finite=False).isnan().all()
    with pytest.raises(TypeError, match="x"):
        check_tensor("x", torch.tensor([True]), floating=False)


def test_check_finite_ignores_integer_tensors_and_does_not_touch_autograd() -> None:
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    assert check_finite("t", t) is t
    assert check_finite("counts", torch.tensor([1, 2])).dtype == torch.int64
    with pytest.raises(ValueError, match="t must be finite"):
        check_finite("t", torch.tensor([1.0, math.nan], requires_grad=True))


def test_check_same_shape_names_every_argument() -> None:
    check_same_shape(a=torch.zeros(3), b=torch.ones(3), c=torch.ones(3))
    with pytest.raises(ValueError, match="shape mismatch") as info:
        check_same_shape(chosen=torch.zeros(3), rejected=torch.zeros(4))
    assert "chosen (3,)" in str(info.value)
    assert "rejected (4,)" in str(info.value)


def test_number_checks() -> None:
    assert check_positive("beta", 0.5) == 0.5
    assert check_positive("beta", torch.tensor(2.0)) == 2.0
    assert check_non_negative("alpha", 0) == 0.0
    assert check_real("margin", -3) == -3.0
    assert check_positive_int("n_bins", 7) == 7
    assert check_in_interval("eps", 0.25, 0.0, 0.5, high_closed=False) == 0.25
    assert check_choice("mode", "a", ("a", "b")) == "a"


@pytest.mark.parametrize(
    ("call", "error", "fragment"),
    [
        (lambda: check_positive("beta", 0.0), ValueError, "beta must be > 0"),
        (lambda: check_positive("beta", -1), ValueError, "beta must be > 0"),
        (lambda: check_positive("beta", math.nan), ValueError, "beta must be finite"),
        (lambda: check_positive("beta", math.inf), ValueError, "beta must be finite"),
        (lambda: check_positive("beta", True), TypeError, "beta"),
        (lambda: check_positive("beta", "0.1"), TypeError, "beta"),
        (lambda: check_positive("beta", torch.ones(2)), TypeError, "beta"),
        (lambda: check_non_negative("alpha", -1e-9), ValueError, "alpha must be >= 0"),
        (lambda: check_real("margin", None), TypeError, "margin"),
        (lambda: check_positive_int("n_bins", 0), ValueError, "n_bins must be >= 1"),
        (lambda: check_positive_int("n_bins", 2.0), TypeError, "n_bins"),
        (lambda: check_positive_int("n_bins", True), TypeError, "n_bins"),
        (lambda: check_in_interval("eps", 0.5, 0, 0.5, high_closed=False), ValueError, "[0, 0.5)"),
        (lambda: check_in_interval("eps", 0.0, 0, 1, low_closed=False), ValueError, "(0, 1]"),
        (lambda: check_choice("binning", "x", ("uniform",)), ValueError, "unknown binning 'x'"),
        (lambda: check_choice("binning", 3, ("uniform",)), TypeError, "binning"),
    ],
)
def test_number_and_choice_checks_reject_bad_values(call, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)


def test_check_token_counts() -> None:
    counts = torch.tensor([1, 5, 3])
    assert check_token_counts("n_tokens", counts) is counts
    assert check_token_counts("n_tokens", torch.tensor([0.5, 2.0])).dtype == torch.float32
    with pytest.raises(ValueError, match=r"n_tokens must be > 0 everywhere; found 2"):
        check_token_counts("n_tokens", torch.tensor([0, 3, -1]))
    with pytest.raises(ValueError, match="n_tokens must be finite"):
        check_token_counts("n_tokens", torch.tensor([math.inf]))
    with pytest.raises(ValueError, match="n_tokens is empty"):
        check_token_counts("n_tokens", torch.tensor([], dtype=torch.long))

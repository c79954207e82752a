"""Interface of ``oodpl.core.hypergrad``: dispatch, input validation, side effects, cost, and use
on the LoRA parameters of a real (tiny) transformer layer through ``torch.func.functional_call``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call

from oodpl.core.hypergrad import (
    METHODS,
    first_order_hypergradient,
    hypergradient,
    implicit_hypergradient,
    truncated_hypergradient,
    unrolled_hypergradient,
)
from oodpl.core.hypergrad import _params as P
from oodpl.core.testing import check_hypergradient

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads; on a loaded machine they cost 10-100x."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def toy(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, generator=gen, dtype=DT)
    y = torch.randn(8, generator=gen, dtype=DT)

    def inner(theta, phi, batch):
        pred = torch.tanh(x @ theta["w"]) * phi["scale"]
        return torch.mean((pred - y) ** 2) + phi["l2"] * torch.sum(theta["w"] ** 2) * batch

    def outer(theta, batch):
        return torch.mean((x @ theta["w"] - y) ** 2)

    theta0 = {"w": torch.randn(3, generator=gen, dtype=DT)}
    phi = {"scale": torch.tensor(1.5, dtype=DT), "l2": torch.tensor(1.0, dtype=DT)}
    return inner, outer, theta0, phi, [1.0, 0.5, 2.0]


DIRECT = {
    "unrolled": (unrolled_hypergradient, {}),
    "truncated": (truncated_hypergradient, {"truncate": 2}),
    "first_order": (first_order_hypergradient, {"radius": 0.01}),
    "neumann": (implicit_hypergradient, {"method": "neumann", "terms": 4}),
    "cg": (implicit_hypergradient, {"method": "cg", "terms": 3}),
}


@pytest.mark.parametrize("method", METHODS)
def test_dispatcher_calls_the_named_method(method):
    inner, outer, theta0, phi, batches = toy()
    fn, options = DIRECT[method]
    direct = fn(inner, outer, theta0, phi, batches, None, lr=0.3, **options)
    options = {k: v for k, v in options.items() if k != "method"}
    via = hypergradient(inner, outer, theta0, phi, batches, None, lr=0.3, method=method, **options)
    for key in phi:
        assert torch.equal(direct.grad[key], via.grad[key])
    assert via.method == method
    assert len(via.inner_losses) == 3
    assert via.grad_norm == pytest.approx(float(P.norm(via.grad)))


def test_dispatcher_rejects_unknown_method_and_bad_options():
    inner, outer, theta0, phi, batches = toy()
    with pytest.raises(ValueError, match="method"):
        hypergradient(inner, outer, theta0, phi, batches, None, lr=0.3, method="exact")
    with pytest.raises(TypeError):
        hypergradient(inner, outer, theta0, phi, batches, None, lr=0.3, method="unrolled", terms=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"lr": 0.0}, ValueError, "lr"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr": True}, TypeError, "lr"),
        ({"inner_batches": []}, ValueError, "inner_batches"),
        ({"inner_batches": 3}, TypeError, "inner_batches"),
        ({"theta0": {}}, ValueError, "theta0"),
        ({"theta0": {"w": torch.zeros(3, dtype=torch.long)}}, TypeError, "theta0\\['w'\\]"),
        ({"theta0": {"w": [0.0, 0.0, 0.0]}}, TypeError, "theta0\\['w'\\]"),
        ({"phi": {1: torch.zeros(1)}}, TypeError, "phi keys"),
        ({"phi": {"scale": torch.tensor(float("inf"))}}, ValueError, "phi"),
        ({"inner_loss": None}, TypeError, "inner_loss"),
        ({"outer_loss": 3}, TypeError, "outer_loss"),
    ],
)
def test_invalid_inputs_name_the_argument(kwargs, error, name):
    inner, outer, theta0, phi, batches = toy()
    args = {"inner_loss": inner, "outer_loss": outer, "theta0": theta0, "phi": phi}
    args |= {"inner_batches": batches, "outer_batch": None, "lr": 0.3}
    args |= kwargs
    for method in METHODS:
        with pytest.raises(error, match=name):
            hypergradient(**args, method=method)


@pytest.mark.parametrize(
    ("method", "options", "name"),
    [
        ("truncated", {"truncate": 0}, "truncate"),
        ("truncated", {"truncate": 4}, "truncate"),
        ("first_order", {"radius": 0.0}, "radius"),
        ("first_order", {"truncate": 9}, "truncate"),
        ("neumann", {"terms": -1}, "terms"),
        ("cg", {"terms": 0}, "terms"),
        ("cg", {"damping": -0.1}, "damping"),
        ("neumann", {"neumann_lr": 0.0}, "neumann_lr"),
    ],
)
def test_invalid_method_options_name_the_option(method, options, name):
    inner, outer, theta0, phi, batches = toy()
    with pytest.raises(ValueError, match=name):
        hypergradient(inner, outer, theta0, phi, batches, None, lr=0.3, method=method, **options)
    with pytest.raises(ValueError, match="method"):
        implicit_hypergradient(inner, outer, theta0, phi, batches, None, lr=0.3, method="lu")
    with pytest.raises(TypeError, match="truncate"):
        truncated_hypergradient(inner, outer, theta0, phi, batches, None, lr=0.3, truncate=1.0)


def test_bad_loss_values_are_reported_not_propagated():
    inner, outer, theta0, phi, batches = toy()

    def vector_loss(theta, phi_, batch):
        return theta["w"] * 2

    def nan_outer(theta, batch):
        return outer(theta, batch) * float("nan")

    with pytest.raises(ValueError, match="inner_loss must return a scalar"):
        unrolled_hypergradient(vector_loss, outer, theta0, phi, batches, None, lr=0.3)
    with pytest.raises(TypeError, match=r"outer_loss must return a torch\.Tensor"):
        unrolled_hypergradient(inner, lambda t, b: 1.0, theta0, phi, batches, None, lr=0.3)
    with pytest.raises(FloatingPointError, match="outer_loss"):
        unrolled_hypergradient(inner, nan_outer, theta0, phi, batches, None, lr=0.3)
    with pytest.raises(FloatingPointError, match="inner"):  # lr far too large: divergence
        unrolled_hypergradient(
            lambda t, p, b: torch.sum(t["w"] ** 4), outer, theta0, phi, batches * 10, None, lr=1e6
        )


@pytest.mark.parametrize("method", METHODS)
def test_results_are_detached_and_inputs_untouched(method):
    inner, outer, theta0, _, batches = toy()
    phi = {k: nn.Parameter(v.clone()) for k, v in toy()[3].items()}
    before = {k: v.detach().clone() for k, v in phi.items()}
    result = hypergradient(inner, outer, theta0, phi, batches, None, lr=0.3, method=method)
    for key, value in phi.items():
        assert value.grad is None
        assert torch.equal(value.detach(), before[key])
    assert not theta0["w"].requires_grad
    for tensor in [*result.grad.values(), *result.theta.values()]:
        assert not tensor.requires_grad and tensor.grad_fn is None
    assert set(result.grad) == set(phi)


def test_each_method_rebuilds_one_graph_per_step():
    """Cost model: unrolled K + K − 1 inner evaluations (the last step's graph is built by the
    inner loop and reused), truncated K + T − 1, first-order K + 2K, implicit K + (HVPs) + 1
    (the mixed product)."""
    inner, outer, theta0, phi, _ = toy()
    calls = []

    def counted(theta, phi_, batch):
        calls.append(batch)
        return inner(theta, phi_, batch)

    batches = [0.5, 1.0, 1.5, 2.0, 2.5]
    expected = {
        ("unrolled", ()): 5 + 4,
        ("truncated", (("truncate", 2),)): 5 + 1,
        ("first_order", ()): 5 + 2 * 5,
        ("neumann", (("terms", 3),)): 5 + 3 + 1,
    }
    for (method, options), count in expected.items():
        calls.clear()
        hypergradient(
            counted, outer, theta0, phi, batches, None, lr=0.2, method=method, **dict(options)
        )
        assert len(calls) == count, method
    calls.clear()
    unrolled_hypergradient(counted, outer, theta0, phi, batches, None, lr=0.2)
    # forward in order, reverse pass from step K-2 down (step K-1's graph comes from the forward)
    assert calls == batches + batches[::-1][1:]


class _OnceDifferentiableTanh(torch.autograd.Function):
    """tanh whose backward cannot itself be differentiated, like fused attention kernels."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


def test_first_order_needs_no_double_backward():
    inner, outer, theta0, phi, batches = toy()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=gen, dtype=DT)

    def make(act):
        def loss(theta, phi_, batch):
            return inner(theta, phi_, batch) + torch.mean(act(x @ theta["w"]) * phi_["scale"]) ** 2

        return loss

    fused, reference = make(_OnceDifferentiableTanh.apply), make(torch.tanh)
    exact = unrolled_hypergradient(reference, outer, theta0, phi, batches, None, lr=0.3)
    for method in ("unrolled", "truncated", "cg", "neumann"):  # loud, not silently zero
        with pytest.raises(RuntimeError, match="first_order"):
            hypergradient(fused, outer, theta0, phi, batches, None, lr=0.3, method=method)
    approx = first_order_hypergradient(
        fused, outer, theta0, phi, batches, None, lr=0.3, radius=1e-3
    )
    for key in phi:
        assert torch.allclose(approx.grad[key], exact.grad[key], rtol=1e-5, atol=1e-8)


def test_lora_parameters_of_a_transformer_layer_via_functional_call():
    """θ = rank-2 LoRA factors on two weights of an encoder layer (the model is never touched);
    φ = a linear reward head. Unrolled matches finite differences; first-order is close."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        8, 2, dim_feedforward=16, dropout=0.0, activation="gelu", batch_first=True
    )  # smooth activation: finite differences of gradients need no kinks
    layer = layer.to(DT).eval()
    base = {k: v.detach() for k, v in layer.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    responses = torch.randn(5, 3, 4, 8, generator=gen, dtype=DT)  # prompts x candidates x tokens
    head = torch.randn(8, generator=gen, dtype=DT)
    targets = ("linear1.weight", "self_attn.out_proj.weight")

    def logps(theta):
        weights = dict(base)
        for name in targets:
            key = name.replace(".", "_")
            weights[name] = base[name] + theta[f"{key}.B"] @ theta[f"{key}.A"]
        hidden = functional_call(layer, weights, (responses.reshape(15, 4, 8),))
        logits = (hidden.mean(1) @ head).reshape(5, 3)
        return torch.log_softmax(logits, -1)

    def inner(theta, phi, batch):
        rewards = responses.mean(2) @ phi["head"]  # [5, 3]
        weights = torch.softmax(rewards.reshape(-1), 0).reshape(5, 3)
        return -(weights * logps(theta)).sum()

    def outer(theta, batch):
        lp = logps(theta)
        return -torch.nn.functional.logsigmoid(lp[:, 0] - lp[:, 1]).mean()

    theta0 = {}
    for name in targets:
        out_dim, in_dim = base[name].shape
        key = name.replace(".", "_")
        theta0[f"{key}.A"] = 0.1 * torch.randn(2, in_dim, generator=gen, dtype=DT)
        theta0[f"{key}.B"] = 0.1 * torch.randn(out_dim, 2, generator=gen, dtype=DT)
    phi = {"head": torch.randn(8, generator=gen, dtype=DT)}
    check = check_hypergradient(inner, outer, theta0, phi, [None] * 3, None, lr=0.5, rtol=1e-6)
    assert check.passed and check.rel_error < 1e-6
    exact = unrolled_hypergradient(inner, outer, theta0, phi, [None] * 3, None, lr=0.5)
    approx = first_order_hypergradient(
        inner, outer, theta0, phi, [None] * 3, None, lr=0.5, radius=1e-3
    )
    assert float(P.norm(P.sub(approx.grad, exact.grad))) < 1e-4 * float(P.norm(exact.grad))
    assert all(p.grad is None for p in layer.parameters())


def test_param_helpers():
    a = {"x": torch.ones(2, 3), "y": torch.tensor(2.0)}
    b = {"x": torch.full((2, 3), 3.0), "y": torch.tensor(-1.0)}
    assert float(P.dot(a, b)) == pytest.approx(18.0 - 2.0)
    assert float(P.norm(b)) == pytest.approx((9.0 * 6 + 1.0) ** 0.5)
    assert torch.equal(P.add(a, b, 2.0)["x"], torch.full((2, 3), 7.0))
    assert torch.equal(P.sub(a, b)["y"], torch.tensor(3.0))
    assert torch.equal(P.scale(a, -1.0)["x"], -torch.ones(2, 3))
    flat = P.flatten(b)
    assert flat.shape == (7,)
    back = P.unflatten(flat, b)
    assert all(torch.equal(back[k], b[k]) for k in b)
    assert P.numel(a) == 7 and P.all_finite(a)
    assert not P.all_finite({"x": torch.tensor([float("nan")])})
    with pytest.raises(ValueError, match="7 entries"):
        P.unflatten(torch.zeros(6), b)
    with pytest.raises(ValueError, match="missing \\['y'\\]"):
        P.check_same_structure(a, {"x": a["x"]}, "a", "b")
    with pytest.raises(ValueError, match="shape"):
        P.check_same_structure(a, {"x": torch.ones(3, 2), "y": a["y"]}, "a", "b")
    leaf = P.leaf_copy(a)
    assert leaf["x"].requires_grad and not a["x"].requires_grad


def test_cg_reports_negative_curvature_and_damping_fixes_it():
    """L_in = ½θᵀdiag(1, −0.5)θ − φ·θ is indefinite: CG must warn and flag it; λ = 1 fixes it."""

    def inner(theta, phi, batch):
        t = theta["t"]
        return 0.5 * (t[0] ** 2 - 0.5 * t[1] ** 2) - phi["p"] @ t

    def outer(theta, batch):
        return torch.sum(theta["t"] ** 2)

    theta0 = {"t": torch.tensor([1.0, 1.0], dtype=DT)}
    phi = {"p": torch.tensor([0.3, -0.2], dtype=DT)}
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        result = implicit_hypergradient(
            inner, outer, theta0, phi, [None], None, lr=0.1, method="cg"
        )
    assert result.details["cg_negative_curvature"] == 1.0
    damped = implicit_hypergradient(
        inner, outer, theta0, phi, [None], None, lr=0.1, method="cg", damping=1.0
    )
    assert damped.details["cg_negative_curvature"] == 0.0
    # (H + I)⁻¹ = diag(1/2, 2); g = −Jᵀ p with J = ∂²L/∂φ∂θ = −I, so g = (H + I)⁻¹ ∇L_out(θ^1)
    theta1 = result.theta["t"]
    expected = torch.tensor([0.5, 2.0], dtype=DT) * (2 * theta1)
    assert torch.allclose(damped.grad["p"], expected, atol=1e-12)

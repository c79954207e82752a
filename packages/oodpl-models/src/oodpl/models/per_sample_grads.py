"""Per-sample gradients of a per-row output w.r.t. ``nn.Linear`` weights and biases (METHODS §3).

For an output ``a = f(φ, batch) ∈ R^B`` whose rows are computed independently (a padded
sequence batch through a transformer: attention never mixes rows), ONE forward and ONE backward
of ``Σ_i a_i`` give every ``∂a_i/∂φ``: the gradient reaching a Linear layer's output,
``g = ∂(Σ_j a_j)/∂y``, restricted to row ``i`` is ``∂a_i/∂y_i``, so with the layer's input
``x`` (``y = x Wᵀ + b``, rows ``[B, T, in]`` or ``[B, in]``) the per-sample rule (Opacus) is::

    ∂a_i/∂W = Σ_t g[i, t, :]ᵀ x[i, t, :]        ∂a_i/∂b = Σ_t g[i, t, :]

summed over every call of the layer in the forward. Forward hooks on the Linear modules owning
the named parameters capture their inputs and outputs, and ONE ``autograd.grad`` of ``Σ_i a_i``
w.r.t. those outputs gives the output gradients (the parameters' summed gradients are not formed);
this works when the parameters are swapped in by ``torch.func.functional_call`` (the modules and
their hooks stay; only the tensors change), as :meth:`RewardModel.functional_rewards` does.
Used for the meta-trainer's support rewards (``∂r_φ(x_i, y_i)/∂φ`` for LoRA factors and the value
head), which turns every mixed product of the hypergradient into a contraction
(:mod:`oodpl.core.hypergrad._jacobian`). The rows must be independent (not a packed batch);
that is the caller's promise, the leading dimension ``B`` of every hooked input and output is
checked. Anything else (a parameter that is not a Linear weight/bias, a tied parameter, a
leading dimension other than ``B``) raises :class:`PerSampleGradientError` so that callers can
fall back to vector-Jacobian products.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]

__all__ = ["PerSampleGradientError", "PerSampleGradients", "linear_parameter_modules"]


class PerSampleGradientError(ValueError):
    """The parameters or the forward do not fit the per-sample rule (fall back to VJPs)."""


def linear_parameter_modules(root: nn.Module, names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``{name: (module path, "weight" | "bias")}`` for parameter names of ``root`` that are the
    weight or bias of an ``nn.Linear`` used by no other module; :class:`PerSampleGradientError`
    naming the first other one."""
    owners: dict[int, list[str]] = {}
    for full, param in root.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(full)
    shared = {n for group in owners.values() if len(group) > 1 for n in group}
    out: dict[str, tuple[str, str]] = {}
    for name in names:
        path, _, attr = name.rpartition(".")
        try:
            module = root.get_submodule(path)
        except AttributeError:
            raise PerSampleGradientError(f"{name!r} names no parameter of the model") from None
        if not isinstance(module, nn.Linear) or attr not in ("weight", "bias"):
            raise PerSampleGradientError(
                f"{name!r} is not the weight or bias of an nn.Linear ({type(module).__name__}."
                f"{attr}): per-sample gradients cover nn.Linear layers only"
            )
        if getattr(module, attr) is None:
            raise PerSampleGradientError(f"{name!r}: the Linear layer has no {attr}")
        if name in shared:
            raise PerSampleGradientError(
                f"{name!r} is tied to another parameter (used by another module too): its "
                "per-sample gradient would miss that use"
            )
        out[name] = (path, attr)
    return out


class PerSampleGradients:
    """``(a, {name: ∂a/∂params[name]})`` with ``∂a/∂p`` of shape ``[B, *p.shape]`` (module doc).

    Args:
        root: the module whose parameters are named (e.g. a ``RewardModel``).
        names: the parameter names (checked once here, see :func:`linear_parameter_modules`).
    """

    def __init__(self, root: nn.Module, names: Iterable[str]) -> None:
        self.root = root
        self.names = tuple(names)
        self.targets = linear_parameter_modules(root, self.names)
        self.paths = sorted({path for path, _ in self.targets.values()})

    def __call__(
        self, params: Mapping[str, Tensor], forward: Callable[[Params], Tensor]
    ) -> tuple[Tensor, Params]:
        """Run ``a = forward(leaves)`` (``leaves``: detached copies of ``params`` that require
        grad; ``forward`` must use them, e.g. through ``functional_call``) and one backward of
        ``Σ_i a_i``; return ``a`` (detached, ``[B]``) and the per-sample gradients."""
        missing = set(self.names) - set(params)
        if missing or set(params) - set(self.names):
            raise ValueError(
                f"params must hold exactly the names given at construction, got "
                f"{sorted(set(params) ^ set(self.names))[:3]} differing"
            )
        calls: dict[str, list[list[Tensor | None]]] = {path: [] for path in self.paths}

        def forward_hook(path: str):
            def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
                if not args or not isinstance(output, Tensor):
                    raise PerSampleGradientError(f"{path}: Linear called without a tensor input")
                calls[path].append([args[0].detach(), output])  # output -> its gradient below

            return hook

        handles = []
        try:
            for path in self.paths:
                module = self.root.get_submodule(path)
                handles.append(module.register_forward_hook(forward_hook(path)))
            with torch.enable_grad():
                leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
                value = forward(leaves)
                if not isinstance(value, Tensor) or value.ndim != 1:
                    shape = tuple(value.shape) if isinstance(value, Tensor) else type(value)
                    raise PerSampleGradientError(
                        f"the output must be one value per row, got {shape}"
                    )
                rows = value.shape[0]
                for path, records in calls.items():
                    for x, _ in records:
                        if x is not None and (x.ndim < 2 or x.shape[0] != rows):
                            raise PerSampleGradientError(
                                f"{path}: input of shape {tuple(x.shape)} does not lead with the "
                                f"batch dimension B={rows} (a packed or reshaped batch?)"
                            )
                # ∂(Σ_i a_i)/∂y for every hooked output y, straight from autograd (the
                # parameters' own summed gradients are never formed)
                records = [r for rs in calls.values() for r in rs]
                reached = [r for r in records if r[1] is not None and r[1].requires_grad]
                grads: tuple[Tensor | None, ...] = ()
                if value.requires_grad and reached:
                    outputs = [r[1] for r in reached]
                    grads = torch.autograd.grad(value.sum(), outputs, allow_unused=True)
                for record in records:
                    record[1] = None
                for record, grad in zip(reached, grads, strict=False):
                    record[1] = None if grad is None else grad.detach()
        finally:
            for handle in handles:
                handle.remove()
        return value.detach(), self._assemble(calls, params, rows)

    def _assemble(
        self,
        calls: Mapping[str, list[list[Tensor | None]]],
        params: Mapping[str, Tensor],
        rows: int,
    ) -> Params:
        out: Params = {}
        for name, (path, attr) in self.targets.items():
            param = params[name]
            dtype = torch.promote_types(param.dtype, torch.float32)
            total = torch.zeros((rows, *param.shape), dtype=dtype, device=param.device)
            for x, grad in calls[path]:
                if grad is None:
                    continue  # the output did not reach a (unused in this forward)
                g = grad.to(dtype).reshape(rows, -1, grad.shape[-1])
                if attr == "bias":
                    total += g.sum(dim=1)
                else:
                    assert x is not None
                    total += torch.einsum(
                        "bto,bti->boi", g, x.to(dtype).reshape(rows, -1, x.shape[-1])
                    )
            out[name] = total.to(param.dtype)
        return out

"""The engine's AdamW implementations: fused (default where supported) and foreach agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oodpl.models.engine import EngineConfig, build_engine


def _train(impl: str, steps: int = 5) -> tuple[list[float], torch.Tensor, torch.optim.Optimizer]:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    engine = build_engine(
        module, EngineConfig(lr=1e-2, weight_decay=0.1, max_steps=steps, optimizer_impl=impl)
    )
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    losses = []
    for _ in range(steps):
        loss = ((engine.model(x) - y) ** 2).mean()
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.detach()))
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    return losses, flat, engine.optimizer


def test_fused_and_foreach_adamw_agree() -> None:
    fused_losses, fused_params, fused = _train("fused")
    foreach_losses, foreach_params, foreach = _train("foreach")
    assert all(group["fused"] for group in fused.param_groups)
    assert all(group["foreach"] and not group["fused"] for group in foreach.param_groups)
    assert fused_losses == pytest.approx(foreach_losses, abs=1e-6)
    assert fused_losses[-1] < fused_losses[0]
    torch.testing.assert_close(fused_params, foreach_params, rtol=1e-5, atol=1e-6)


def test_auto_picks_the_fused_kernel_on_cpu() -> None:
    _, _, optimizer = _train("auto", steps=1)
    assert all(group["fused"] for group in optimizer.param_groups)


def test_optimizer_impl_is_validated() -> None:
    with pytest.raises(ValueError, match=r"EngineConfig\.optimizer_impl must be one of"):
        EngineConfig(optimizer_impl="adam8bit")

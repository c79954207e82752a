"""Chunked LM head + log-softmax equals the unchunked computation and never sees > chunk rows."""

from __future__ import annotations

import pytest
import torch

from oodpl.models import logps as logps_module
from oodpl.models.backbone import hidden_states, output_logits
from oodpl.models.logps import chunked_token_logps
from oodpl.models.policy import Policy

N_POSITIONS = 23  # prime: no chunk size below divides it


@pytest.fixture(scope="module", params=["pythia-tiny", "gemma-tiny"])
def setup(request, tokenizer, preferences):
    policy = Policy.from_preset(request.param, tokenizer, seed=3)
    batch = policy.completion_collator()(
        [{"prompt": p.prompt, "response": p.chosen} for p in preferences[:4]]
    )
    with torch.no_grad():
        hidden = hidden_states(policy.model, batch).reshape(-1, policy.lm.config.hidden_size)
    hidden = hidden[:N_POSITIONS].clone()
    targets = torch.randint(
        0, policy.lm.config.vocab_size, (N_POSITIONS,), generator=torch.Generator().manual_seed(0)
    )
    return policy, hidden, targets


def _unchunked(policy, hidden, targets):
    logps = torch.log_softmax(output_logits(policy.model, hidden).float(), dim=-1)
    return logps.gather(-1, targets[:, None]).squeeze(-1)


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 7, 22, 23, 64])
def test_chunked_equals_unchunked(setup, chunk_size):
    policy, hidden, targets = setup
    with torch.no_grad():
        want = _unchunked(policy, hidden, targets)
        got = chunked_token_logps(policy.model, hidden, targets, chunk_size=chunk_size)
    assert got.shape == (N_POSITIONS,) and got.dtype == torch.float32
    assert (want - got).abs().max() <= 1e-6


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("chunk_size", [3, 10])
def test_chunked_gradients_equal_unchunked(setup, chunk_size, recompute):
    policy, hidden, targets = setup
    weights = torch.linspace(-1.0, 1.0, N_POSITIONS)
    head = policy.lm.get_output_embeddings().weight
    grads = []
    for fn in (
        lambda h: _unchunked(policy, h, targets),
        lambda h: chunked_token_logps(
            policy.model, h, targets, chunk_size=chunk_size, recompute=recompute
        ),
    ):
        h = hidden.clone().requires_grad_(True)
        loss = (fn(h) * weights).sum()
        grads.append(torch.autograd.grad(loss, [h, head]))
    for want, got in zip(*grads, strict=True):
        assert want.abs().max() > 0
        assert (want - got).abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("with_grad", "recompute", "threshold", "recomputed"),
    [
        (False, None, 1, False),
        (True, True, None, True),
        (True, False, None, False),
        (True, None, None, False),  # default: 23 x 1k-vocab log-probs are cheaper to store
        (True, None, 1, True),  # default above RECOMPUTE_MIN_ELEMENTS: recompute
    ],
)
def test_head_never_sees_more_than_chunk_rows(
    setup, monkeypatch, with_grad, recompute, threshold, recomputed
):
    policy, hidden, targets = setup
    if threshold is not None:
        monkeypatch.setattr(logps_module, "RECOMPUTE_MIN_ELEMENTS", threshold)
    rows_seen: list[int] = []
    hook = policy.lm.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows_seen.append(args[0].shape[0])
    )
    try:
        h = hidden.clone().requires_grad_(with_grad)
        with torch.set_grad_enabled(with_grad):
            out = chunked_token_logps(policy.model, h, targets, chunk_size=6, recompute=recompute)
            if with_grad:
                out.sum().backward()
    finally:
        hook.remove()
    assert max(rows_seen) <= 6
    # forward: ceil(23 / 6) = 4 chunks; with recompute each chunk runs again in backward
    assert len(rows_seen) == (8 if recomputed else 4)
    assert sum(rows_seen) == N_POSITIONS * (2 if recomputed else 1)


def test_float64_model_gives_float64_logps(tokenizer):
    policy = Policy.from_preset("pythia-tiny", tokenizer, dtype=torch.float64)
    hidden = torch.randn(9, policy.lm.config.hidden_size, dtype=torch.float64)
    targets = torch.arange(9)
    with torch.no_grad():
        got = chunked_token_logps(policy.model, hidden, targets, chunk_size=4)
        want = torch.log_softmax(output_logits(policy.model, hidden), -1)[torch.arange(9), targets]
    assert got.dtype == torch.float64
    assert (want - got).abs().max() <= 1e-12


def test_bad_arguments_are_named(setup):
    policy, hidden, targets = setup
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            chunked_token_logps(policy.model, hidden, targets, chunk_size=bad)
    with pytest.raises(ValueError, match="hidden"):
        chunked_token_logps(policy.model, hidden[0], targets)
    with pytest.raises(ValueError, match="targets"):
        chunked_token_logps(policy.model, hidden, targets[:-1])
    with pytest.raises(ValueError, match="targets"):
        chunked_token_logps(policy.model, hidden, targets.float())

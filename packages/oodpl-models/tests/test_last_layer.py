"""The last decoder layer restricted to the scored positions (``oodpl.models.last_layer``):
rewards and gradients equal the full layer's (padded, packed and prefix-shared batches), the MLP
really runs on the scored positions only, and the restriction stands down where it must."""

from __future__ import annotations

import contextlib

import pytest
import torch

from oodpl.models import last_layer
from oodpl.models.collate import TokenizedPreference
from oodpl.models.lora import LoraSpec
from oodpl.models.packing import pack_tokenized
from oodpl.models.reward_model import RewardModel
from oodpl.models.shared_prefix import pack_shared_prefix

CAUSAL = ("pythia-tiny", "gemma-tiny")


@contextlib.contextmanager
def _full_layer():
    """Disable the restriction: the reference computation runs every position."""
    original = last_layer.position_wise_parts
    last_layer.position_wise_parts = lambda model: ()
    try:
        yield
    finally:
        last_layer.position_wise_parts = original


def _model(tokenizer, preset: str, perturb) -> RewardModel:
    model = RewardModel.from_preset(preset, tokenizer, seed=3, lora=LoraSpec(r=4))
    perturb(model, seed=5, scale=0.2)
    return model.eval()


def _batches(model, preferences) -> dict[str, dict]:
    collator = model.preference_collator()
    preferences = preferences[:6]
    items: list[TokenizedPreference] = collator.tokenize(preferences)
    return {
        "padded": collator(preferences),
        "packed": pack_tokenized(items),
        "shared_prefix": pack_shared_prefix(items),
    }


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(11)


def _assert_same_gradients(fast_grads, full_grads, label: str = "") -> None:
    """Equal to 1e-5 of the largest gradient entry, which must be far from zero (every
    parameter tensor gets a gradient)."""
    scale = max(float(g.abs().max()) for g in full_grads)
    assert scale > 1e-2, (label, scale)
    assert all(float(g.abs().max()) > 0 for g in full_grads), label
    for fast_grad, full_grad in zip(fast_grads, full_grads, strict=True):
        assert float((fast_grad - full_grad).abs().max()) <= 1e-5 * scale, label


def _scores_and_grads(model: RewardModel, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    chosen, rejected = model.preference_rewards(batch)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.linspace(-1.0, 2.0, chosen.numel())
    loss = (weights * chosen).sum() - (weights.flip(0) * rejected).sum()
    grads = torch.autograd.grad(loss, params)
    return torch.cat([chosen, rejected]).detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("preset", CAUSAL)
def test_rewards_and_gradients_equal_the_full_layer(tokenizer, preferences, perturb, preset):
    model = _model(tokenizer, preset, perturb)
    assert len(last_layer.position_wise_parts(model.model)) == 2
    for name, batch in _batches(model, preferences).items():
        fast, fast_grads = _scores_and_grads(model, batch)
        with _full_layer():
            full, full_grads = _scores_and_grads(model, batch)
        assert torch.allclose(fast, full, atol=1e-5, rtol=0), (name, (fast - full).abs().max())
        _assert_same_gradients(fast_grads, full_grads, name)


@pytest.mark.parametrize("preset", CAUSAL)
def test_the_mlp_runs_on_the_scored_positions_only(tokenizer, preferences, perturb, preset):
    model = _model(tokenizer, preset, perturb)
    _, mlp = last_layer.position_wise_parts(model.model)
    seen: list[tuple[int, ...]] = []
    handle = mlp.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        batch = _batches(model, preferences)["padded"]
        model.preference_rewards(batch)
        with _full_layer():
            model.preference_rewards(batch)
    finally:
        handle.remove()
    rows, width = batch["chosen_input_ids"].shape[0] * 2, model.model.config.hidden_size
    assert seen[0] == (rows, 1, width)  # one position per sequence, samples still leading
    assert seen[1][0] == rows and seen[1][1] > 1  # the full layer: every position


def test_stands_down_for_seq2seq_and_activation_checkpointing(tokenizer, perturb):
    t5 = _model(tokenizer, "t5-tiny", perturb)
    assert last_layer.position_wise_parts(t5.model) == ()
    pythia = _model(tokenizer, "pythia-tiny", perturb)
    rows, cols = torch.arange(2), torch.tensor([3, 4])
    with last_layer.scored_positions_only(pythia.model, rows, cols) as active:
        assert active
    pythia.model.train()
    pythia.model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    with last_layer.scored_positions_only(pythia.model, rows, cols) as active:
        assert not active  # a backward pass would re-run the layer after the hooks are gone
    with torch.no_grad(), last_layer.scored_positions_only(pythia.model, rows, cols) as active:
        assert active  # nothing is recomputed without a backward pass


def test_hooks_are_removed_after_an_error(tokenizer, perturb):
    model = _model(tokenizer, "pythia-tiny", perturb)
    parts = last_layer.position_wise_parts(model.model)
    before = [len(p._forward_pre_hooks) + len(p._forward_hooks) for p in parts]
    with (
        pytest.raises(RuntimeError, match="boom"),
        last_layer.scored_positions_only(model.model, torch.arange(1), torch.zeros(1).long()),
    ):
        raise RuntimeError("boom")
    assert [len(p._forward_pre_hooks) + len(p._forward_hooks) for p in parts] == before


def test_a_position_scored_twice_gets_its_gradient_once(tokenizer, completions, perturb):
    """Repeated (row, col) pairs: the restricted layer's hidden states, read at each copy, give
    the full layer's values and parameter gradients (no doubled gradient through the scatter)."""
    from oodpl.models.backbone import hidden_states

    model = _model(tokenizer, "pythia-tiny", perturb)
    batch = model.completion_collator()(completions[:4])
    last = batch["attention_mask"].sum(dim=1) - 1  # right padding: the last real token
    rows = torch.tensor([0, 1, 1, 2, 3, 3, 3])
    cols = last[rows] - torch.tensor([0, 0, 0, 1, 2, 0, 2])  # real tokens, some twice
    # per read AND per feature (a sum over features of a layer-normed state has no gradient)
    weights = torch.randn(rows.numel(), model.model.config.hidden_size, generator=_generator())
    params = [p for p in model.model.parameters() if p.requires_grad]  # LoRA (no value head)
    results = []
    for restricted in (True, False):
        with (
            last_layer.scored_positions_only(model.model, rows, cols)
            if restricted
            else contextlib.nullcontext()
        ):
            picked = hidden_states(model.model, batch)[rows, cols]
        grads = torch.autograd.grad((weights * picked).sum(), params)
        results.append((picked.detach(), grads))
    (fast, fast_grads), (full, full_grads) = results
    assert torch.allclose(fast, full, atol=1e-5, rtol=0)
    _assert_same_gradients(fast_grads, full_grads)

"""RewardModel: last-token pooling (left/right padding, T5 decoder), one concatenated forward,
trainable parameters, and a Bradley-Terry training sanity check per architecture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from oodpl.models.collate import split_pair_batch
from oodpl.models.lora import LoraSpec
from oodpl.models.reward_model import RewardModel


def manual_reward(rm: RewardModel, prompt: str, response: str) -> float:
    """Independent computation: unpadded inputs through the plain transformers modules, hidden
    state of the last token (T5: last decoder position, y as decoder input), value head by hand."""
    tok = rm.tokenizer
    x = tok(prompt, add_special_tokens=False)["input_ids"]
    y = [*tok(response, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    lm = rm.lm
    with torch.no_grad():
        if rm.seq2seq:
            out = lm(
                input_ids=torch.tensor([x]),
                decoder_input_ids=torch.tensor([[lm.config.decoder_start_token_id, *y]]),
                output_hidden_states=True,
            )
            last = out.decoder_hidden_states[-1][0, -1]
        else:
            out = lm(input_ids=torch.tensor([x + y]), output_hidden_states=True)
            last = out.hidden_states[-1][0, -1]
        w, b = rm.value_head.weight[0], rm.value_head.bias[0]
        return float(last.float() @ w + b)


@pytest.mark.parametrize("side", ["left", "right"])
def test_rewards_pool_the_last_real_token(tokenizer, preferences, arch, side):
    rm = RewardModel.from_preset(arch, tokenizer, seed=0).eval()
    records = preferences[:6]
    pair = rm.preference_collator(padding_side=side)(records)
    with torch.no_grad():
        chosen, rejected = rm.preference_rewards(pair)
    assert chosen.shape == (6,) and chosen.dtype == torch.float32
    expected_c = [manual_reward(rm, r.prompt, r.chosen) for r in records]
    expected_r = [manual_reward(rm, r.prompt, r.rejected) for r in records]
    torch.testing.assert_close(chosen, torch.tensor(expected_c), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rejected, torch.tensor(expected_r), atol=2e-5, rtol=1e-5)


def test_one_forward_equals_separate_forwards(tokenizer, preferences, arch):
    rm = RewardModel.from_preset(arch, tokenizer, seed=1).eval()
    pair = rm.preference_collator()(preferences[:4])
    calls = []
    handle = rm.lm.register_forward_hook(lambda *a: calls.append(1))
    body = rm.lm.get_decoder() if rm.seq2seq else rm.lm.base_model
    body_handle = body.register_forward_hook(lambda *a: calls.append("body"))
    head_handle = rm.lm.get_output_embeddings().register_forward_hook(
        lambda *a: calls.append("lm_head")
    )
    with torch.no_grad():
        chosen, rejected = rm(pair)
    for h in (handle, body_handle, head_handle):
        h.remove()
    assert calls == ["body"]  # one body pass, no LM logits
    with torch.no_grad():
        alone_c = rm.rewards(split_pair_batch(pair, "chosen"))
        alone_r = rm.rewards(split_pair_batch(pair, "rejected"))
    torch.testing.assert_close(chosen, alone_c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rejected, alone_r, atol=1e-5, rtol=1e-5)


def test_trainable_parameters_full_and_lora(tokenizer):
    full = RewardModel.from_preset("pythia-tiny", tokenizer)
    names = set(full.trainable_parameters())
    assert {"value_head.weight", "value_head.bias"} <= names
    assert not any("lm_head" in n for n in names)  # untied LM head unused -> frozen
    assert any("embed_in" in n for n in names)
    tied = RewardModel.from_preset("gemma-tiny", tokenizer)
    assert any("embed_tokens" in n for n in tied.trainable_parameters())  # tied: embeddings train
    lora = RewardModel.from_preset("pythia-tiny", tokenizer, lora=LoraSpec(r=2))
    names = set(lora.trainable_parameters())
    assert {"value_head.weight", "value_head.bias"} <= names
    assert all(("lora_" in n) or n.startswith("value_head.") for n in names)
    assert len(names) == 2 + 2 * 2  # A and B in both layers' query_key_value
    assert all(p.requires_grad for p in lora.trainable_parameters().values())


def test_value_head_is_seeded(tokenizer):
    a = RewardModel.from_preset("pythia-tiny", tokenizer, seed=4)
    b = RewardModel.from_preset("pythia-tiny", tokenizer, seed=4)
    c = RewardModel.from_preset("pythia-tiny", tokenizer, seed=5)
    assert torch.equal(a.value_head.weight, b.value_head.weight)
    assert not torch.equal(a.value_head.weight, c.value_head.weight)


def test_compute_rewards_matches_batches(tokenizer, preferences):
    rm = RewardModel.from_preset("gemma-tiny", tokenizer)
    collator = rm.preference_collator()
    batches = [collator(preferences[:3]), collator(preferences[3:5])]
    out = rm.compute_rewards(batches)
    assert set(out) == {"chosen_rewards", "rejected_rewards"}
    assert out["chosen_rewards"].shape == (5,)
    assert rm.training  # mode restored
    with torch.no_grad():
        torch.testing.assert_close(out["chosen_rewards"][3:], rm.preference_rewards(batches[1])[0])
    single = rm.compute_rewards([rm.completion_collator()([{"prompt": "a", "response": "b"}])])
    assert set(single) == {"rewards"}


def test_bradley_terry_training_reaches_95_percent(tokenizer, preferences, arch):
    """A few hundred Adam steps of L_BT = -mean log σ(r_w - r_l) (METHODS §1) on 16 fixed pairs
    drive train accuracy to >= 95% (de-risks the trainers)."""
    torch.manual_seed(0)
    rm = RewardModel.from_preset(arch, tokenizer, seed=0)
    pair = rm.preference_collator(padding_side="left" if arch != "t5-tiny" else "right")(
        preferences
    )
    with torch.no_grad():
        chosen, rejected = rm.preference_rewards(pair)
    initial = (chosen > rejected).float().mean().item()
    assert initial < 0.95  # training, not the initialisation, must do the work
    optimizer = torch.optim.Adam(rm.trainable_parameters().values(), lr=3e-3)
    accuracy = 0.0
    for step in range(300):
        chosen, rejected = rm.preference_rewards(pair)
        loss = -F.logsigmoid(chosen - rejected).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            with torch.no_grad():
                chosen, rejected = rm.eval().preference_rewards(pair)
                rm.train()
            accuracy = (chosen > rejected).float().mean().item()
            if accuracy >= 0.95:
                break
    print(f"{arch}: accuracy {initial:.2f} -> {accuracy:.2f} in {step + 1} steps")
    assert accuracy >= 0.95, f"{arch}: train accuracy {accuracy:.2f} after {step + 1} steps"

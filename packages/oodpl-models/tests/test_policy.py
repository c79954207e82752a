"""Policy: response-only sequence log-probs against a token-by-token loop (acceptance 2),
one concatenated forward, the response-positions-only LM head, reference models, generation."""

from __future__ import annotations

import pytest
import torch

from oodpl.models.collate import split_pair_batch
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy


@pytest.mark.parametrize("side", ["left", "right"])
def test_sequence_logps_equal_token_by_token_loop(tokenizer, completions, logps_loop, arch, side):
    """Acceptance 2: for each sample and response token t, the plain model on the unpadded prefix
    with log_softmax at the next token, summed, equals sequence_logps on the padded batch."""
    policy = Policy.from_preset(arch, tokenizer, seed=2).eval()
    records = completions[:5]
    batch = policy.completion_collator(padding_side=side)(records)
    with torch.no_grad():
        logps, n_tokens = policy.sequence_logps(batch)
    expected = torch.tensor(logps_loop(policy, records), dtype=torch.float32)
    torch.testing.assert_close(logps, expected, atol=1e-4, rtol=1e-5)
    lengths = [
        len(tokenizer(r.response, add_special_tokens=False)["input_ids"]) + 1 for r in records
    ]
    assert n_tokens.tolist() == lengths
    assert logps.dtype == torch.float32 and n_tokens.dtype == torch.long
    assert (logps < 0).all()


def test_lm_head_sees_only_response_positions(tokenizer, completions, arch):
    policy = Policy.from_preset(arch, tokenizer, seed=0).eval()
    assert policy.logits_from_hidden  # the shortcut reproduces the model's own logits
    batch = policy.completion_collator(padding_side="left")(completions)
    rows = []
    hook = policy.lm.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape)
    )
    with torch.no_grad():
        shortcut, _ = policy.sequence_logps(batch)
    hook.remove()
    n_response = int(batch["response_mask"].sum())
    assert rows == [torch.Size([n_response, 64])]  # [N_response, H], not [B, T, H]
    policy.logits_from_hidden = False  # the full-logits fallback agrees
    with torch.no_grad():
        full, _ = policy.sequence_logps(batch)
    torch.testing.assert_close(shortcut, full, atol=1e-5, rtol=1e-6)


def test_preference_logps_one_forward(tokenizer, preferences, arch):
    policy = Policy.from_preset(arch, tokenizer, seed=3).eval()
    pair = policy.preference_collator()(preferences[:4])
    body = policy.lm.get_decoder() if policy.seq2seq else policy.lm.base_model
    calls = []
    hook = body.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        c_logps, c_n, r_logps, r_n = policy(pair)
    hook.remove()
    assert len(calls) == 1
    with torch.no_grad():
        c_alone, c_n_alone = policy.sequence_logps(split_pair_batch(pair, "chosen"))
        r_alone, _ = policy.sequence_logps(split_pair_batch(pair, "rejected"))
    torch.testing.assert_close(c_logps, c_alone, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(r_logps, r_alone, atol=1e-5, rtol=1e-6)
    assert torch.equal(c_n, c_n_alone)
    assert r_n.shape == (4,)


def test_gradients_flow_only_from_response_tokens(tokenizer, completions):
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0)
    batch = policy.completion_collator(padding_side="right")(completions[:3])
    logps, _ = policy.sequence_logps(batch)
    logps.sum().backward()
    grads = policy.lm.gpt_neox.embed_in.weight.grad
    used = set(batch["input_ids"][batch["attention_mask"].bool()].tolist())
    unused = [t for t in range(len(tokenizer)) if t not in used]
    # only tokens present in the inputs receive embedding gradient
    assert grads[unused].abs().max() == 0
    assert grads[sorted(used)].abs().sum() > 0


def test_lora_trainable_parameters(tokenizer):
    policy = Policy.from_preset("gemma-tiny", tokenizer, lora=LoraSpec(r=2))
    names = set(policy.trainable_parameters())
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    head = [n for n in names if "lm_head" in n]
    assert len(head) == 1 and "modules_to_save" in head[0]  # LoRA + LM head ([OODPL])
    assert all("lora_" in n or "lm_head" in n for n in names)
    bare = Policy.from_preset("gemma-tiny", tokenizer, lora=LoraSpec(r=2, train_lm_head=False))
    assert all("lora_" in n for n in bare.trainable_parameters())


def test_reference_copy_is_frozen_and_independent(tokenizer, completions, perturb):
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0)
    batch = policy.completion_collator()(completions[:3])
    reference = policy.reference_copy()
    assert not reference.training
    assert not any(p.requires_grad for p in reference.parameters())
    assert reference.trainable_parameters() == {}
    with torch.no_grad():
        before = policy.eval().sequence_logps(batch)[0]
        assert torch.equal(reference.sequence_logps(batch)[0], before)
        perturb(policy)
        assert not torch.allclose(policy.sequence_logps(batch)[0], before)
        assert torch.equal(reference.sequence_logps(batch)[0], before)


def test_adapters_disabled_gives_the_base_model(tokenizer, completions, perturb):
    base = Policy.from_preset("pythia-tiny", tokenizer, seed=0).eval()
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=0, lora=LoraSpec(r=2)).eval()
    perturb(policy)  # adapters and LM-head copy move away from the base
    batch = policy.completion_collator()(completions[:3])
    with torch.no_grad():
        base_logps = base.sequence_logps(batch)[0]
        assert not torch.allclose(policy.sequence_logps(batch)[0], base_logps)
        with policy.adapters_disabled():
            torch.testing.assert_close(policy.sequence_logps(batch)[0], base_logps)
    with pytest.raises(ValueError, match="no LoRA adapter"), base.adapters_disabled():
        pass


def test_compute_logps_precomputes_reference(tokenizer, preferences):
    policy = Policy.from_preset("t5-tiny", tokenizer, seed=0)
    collator = policy.preference_collator()
    batches = [collator(preferences[:2]), collator(preferences[2:5])]
    out = policy.compute_logps(batches)
    assert set(out) == {"chosen_logps", "chosen_n_tokens", "rejected_logps", "rejected_n_tokens"}
    assert out["chosen_logps"].shape == (5,)
    with torch.no_grad():
        torch.testing.assert_close(out["rejected_logps"][2:], policy.eval()(batches[1])[2])
    with pytest.raises(ValueError, match="mix"):
        policy.compute_logps([batches[0], split_pair_batch(batches[0], "chosen")])


def greedy_by_hand(policy: Policy, prompt: str, steps: int) -> list[int]:
    tok = policy.tokenizer
    x = tok(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            if policy.seq2seq:
                start = policy.lm.config.decoder_start_token_id
                logits = policy.lm(
                    input_ids=torch.tensor([x]), decoder_input_ids=torch.tensor([[start, *out]])
                ).logits
            else:
                logits = policy.lm(input_ids=torch.tensor([x + out])).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] == tok.eos_token_id:
                break
    return out


def test_greedy_generation_matches_argmax_loop(tokenizer, arch):
    policy = Policy.from_preset(arch, tokenizer, seed=5)
    prompts = ["review 1: what did you think of the dvd?", "review 22: the kettle?"]
    texts = policy.generate(prompts, max_new_tokens=6, temperature=0)
    assert [len(t) for t in texts] == [1, 1]
    for prompt, (text,) in zip(prompts, texts, strict=True):
        ids = greedy_by_hand(policy, prompt, 6)
        assert text == tokenizer.decode(ids, skip_special_tokens=True)


def test_sampling_controls_and_seed(tokenizer):
    policy = Policy.from_preset("gemma-tiny", tokenizer, seed=1)
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    kwargs = {"max_new_tokens": 8, "temperature": 1.3, "top_p": 0.95, "num_return_sequences": 3}
    a = policy.generate(["review 3:", "review 4:"], seed=11, **kwargs)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = policy.generate(["review 3:", "review 4:"], seed=11, **kwargs)
    c = policy.generate(["review 3:", "review 4:"], seed=12, **kwargs)
    assert len(a) == 2 and all(len(row) == 3 and all(isinstance(s, str) for s in row) for row in a)
    assert a == b
    assert a != c
    assert policy.training  # restored after generation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": []}, "prompts"),
        ({"prompts": ["ok", ""]}, r"prompts\[1\]"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"num_return_sequences": 0}, "num_return_sequences"),
    ],
)
def test_generate_rejects_bad_arguments(tokenizer, kwargs, match):
    policy = Policy.from_preset("pythia-tiny", tokenizer)
    kwargs = {"prompts": ["review:"], **kwargs}
    with pytest.raises(ValueError, match=match):
        policy.generate(kwargs.pop("prompts"), **kwargs)

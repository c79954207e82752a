"""Checkpoints: identical reloads (acceptance 1), readable by plain transformers + peft, LoRA heads
kept through merge, safetensors only, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from oodpl.models.checkpoint import CONFIG_NAME, load, merge_and_save, read_checkpoint_config
from oodpl.models.errors import CheckpointError
from oodpl.models.lora import LoraSpec
from oodpl.models.policy import Policy
from oodpl.models.reward_model import RewardModel


def trained_reward_model(tokenizer, arch, lora, perturb):
    rm = RewardModel.from_preset(arch, tokenizer, seed=0, lora=LoraSpec(r=2) if lora else None)
    perturb(rm)  # adapters / weights and the value head move away from their initialisation
    return rm.eval()


def max_diff(a, b):
    return float((a - b).abs().max())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reward_model_reloads_identically(tokenizer, preferences, perturb, tmp_path, arch, lora):
    rm = trained_reward_model(tokenizer, arch, lora, perturb)
    pair = rm.preference_collator()(preferences[:6])
    rm.save_pretrained(tmp_path)
    again = RewardModel.load(tmp_path).eval()
    with torch.no_grad():
        for before, after in zip(rm(pair), again(pair), strict=True):
            assert max_diff(before, after) <= 1e-6
    assert again.trainable_parameters().keys() == rm.trainable_parameters().keys()
    assert (again.lora is None) == (not lora)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_policy_reloads_identically(tokenizer, preferences, perturb, tmp_path, arch, lora):
    policy = Policy.from_preset(arch, tokenizer, seed=0, lora=LoraSpec(r=2) if lora else None)
    perturb(policy)
    policy.eval()
    pair = policy.preference_collator(padding_side="left")(preferences[:6])
    policy.save_pretrained(tmp_path)
    again = Policy.load(tmp_path).eval()
    with torch.no_grad():
        for before, after in zip(policy(pair), again(pair), strict=True):
            assert max_diff(before.double(), after.double()) <= 1e-6
    assert again.trainable_parameters().keys() == policy.trainable_parameters().keys()
    assert all(p.requires_grad for p in again.trainable_parameters().values())
    frozen = Policy.load(tmp_path, trainable=False)
    assert lora == (frozen.trainable_parameters() == {})


def plain_reward(directory, records, seq2seq, with_adapter):
    """Independent reader: plain transformers + peft + safetensors, reward by hand."""
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    model = auto.from_pretrained(directory, local_files_only=True)
    if with_adapter:
        model = PeftModel.from_pretrained(model, directory / "adapter")
    model.eval()
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    head = load_file(directory / "value_head.safetensors")
    out = []
    with torch.no_grad():
        for prompt, response in records:
            x = tok(prompt, add_special_tokens=False)["input_ids"]
            y = [*tok(response, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            if seq2seq:
                start = model.config.decoder_start_token_id
                result = model(
                    input_ids=torch.tensor([x]),
                    decoder_input_ids=torch.tensor([[start, *y]]),
                    output_hidden_states=True,
                )
                last = result.decoder_hidden_states[-1][0, -1]
            else:
                result = model(input_ids=torch.tensor([x + y]), output_hidden_states=True)
                last = result.hidden_states[-1][0, -1]
            out.append(float(last @ head["weight"][0] + head["bias"][0]))
    return torch.tensor(out)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_plain_transformers_and_peft_read_the_reward_model(
    tokenizer, preferences, perturb, tmp_path, arch, lora
):
    rm = trained_reward_model(tokenizer, arch, lora, perturb)
    rm.save_pretrained(tmp_path)
    records = [(p.prompt, p.chosen) for p in preferences[:3]]
    by_hand = plain_reward(tmp_path, records, rm.seq2seq, with_adapter=lora)
    with torch.no_grad():
        batch = rm.completion_collator()([{"prompt": p, "response": r} for p, r in records])
        ours = rm.rewards(batch)
    torch.testing.assert_close(ours, by_hand, atol=2e-5, rtol=1e-5)
    if lora:  # the root holds the base weights, so without the adapter the rewards differ
        base = plain_reward(tmp_path, records, rm.seq2seq, with_adapter=False)
        assert max_diff(base, by_hand) > 1e-4


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
def test_plain_peft_reads_the_policy_with_its_lm_head(tokenizer, completions, perturb, tmp_path):
    policy = Policy.from_preset("gemma-tiny", tokenizer, seed=0, lora=LoraSpec(r=2))
    perturb(policy)  # includes the trained (untied) LM-head copy
    policy.eval().save_pretrained(tmp_path)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True), tmp_path / "adapter"
    ).eval()
    batch = policy.completion_collator(padding_side="right")(completions[:1])
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    response = batch["response_mask"][0][batch["attention_mask"][0].bool()].bool()
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0, :-1]
        token_logps = torch.log_softmax(logits, -1).gather(-1, ids[1:, None])[:, 0]
        by_hand = token_logps[response[1:]].sum()
        ours = policy.sequence_logps(batch)[0][0]
    torch.testing.assert_close(ours, by_hand, atol=1e-5, rtol=1e-6)


def test_merge_keeps_lora_reward_heads(tokenizer, preferences, perturb, tmp_path, arch):
    rm = trained_reward_model(tokenizer, arch, True, perturb)
    pair = rm.preference_collator()(preferences[:5])
    with torch.no_grad():
        chosen, rejected = rm(pair)
        merged = rm.merged().eval()
        assert merged.lora is None
        torch.testing.assert_close(merged(pair)[0], chosen, atol=1e-5, rtol=1e-5)
        merge_and_save(rm, tmp_path / "merged")
        reloaded = load(tmp_path / "merged").eval()
        assert isinstance(reloaded, RewardModel) and reloaded.lora is None
        torch.testing.assert_close(reloaded(pair)[1], rejected, atol=1e-5, rtol=1e-5)
        # the plain peft path: PeftModel(...).merge_and_unload() + the saved value head
        rm.save_pretrained(tmp_path / "lora")
        records = [(p.prompt, p.rejected) for p in preferences[:5]]
        plain = plain_reward(tmp_path / "lora", records, rm.seq2seq, with_adapter=True)
        torch.testing.assert_close(plain, rejected, atol=2e-5, rtol=1e-5)


def test_merge_keeps_the_policy_lm_head(tokenizer, completions, perturb, tmp_path):
    policy = Policy.from_preset("t5-tiny", tokenizer, seed=0, lora=LoraSpec(r=2))
    perturb(policy)
    batch = policy.completion_collator()(completions[:4])
    with torch.no_grad():
        expected = policy.eval().sequence_logps(batch)[0]
        policy.merge_and_save(tmp_path)
        merged = Policy.load(tmp_path).eval()
        torch.testing.assert_close(merged.sequence_logps(batch)[0], expected, atol=1e-5, rtol=1e-6)
    assert read_checkpoint_config(tmp_path)["lora"] is None


def test_config_file_contents_and_dtype(tokenizer, tmp_path):
    rm = RewardModel.from_preset("pythia-tiny", tokenizer, lora=LoraSpec(r=3), dtype=torch.bfloat16)
    rm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["kind"] == "reward_model" and config["family"] == "causal"
    assert config["dtype"] == "bfloat16" and config["lora"]["r"] == 3
    assert config["tensors"] == {"value_head": "value_head.safetensors"}
    again = RewardModel.load(tmp_path)
    assert again.lm.dtype == torch.bfloat16 and again.lora == rm.lora


def test_resaving_without_lora_removes_the_stale_adapter(tokenizer, tmp_path):
    RewardModel.from_preset("pythia-tiny", tokenizer, lora=LoraSpec(r=2)).save_pretrained(tmp_path)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    RewardModel.from_preset("pythia-tiny", tokenizer).save_pretrained(tmp_path)
    assert not (tmp_path / "adapter").exists()
    assert RewardModel.load(tmp_path).lora is None


def test_from_pretrained_on_plain_and_oodpl_directories(tokenizer, tmp_path, perturb):
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=3)
    policy.lm.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    rm = RewardModel.from_pretrained(tmp_path / "plain", lora=LoraSpec(r=2), seed=9)
    assert rm.lora == LoraSpec(r=2) and rm.tokenizer.pad_token == tokenizer.pad_token
    perturb(rm)
    rm.save_pretrained(tmp_path / "rm")
    again = RewardModel.from_pretrained(tmp_path / "rm")  # an oodpl checkpoint: loaded as saved
    assert torch.equal(again.value_head.weight, rm.value_head.weight)


def test_checkpoint_errors_name_the_file(tokenizer, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        RewardModel.load(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=CONFIG_NAME):
        RewardModel.load(tmp_path)
    Policy.from_preset("pythia-tiny", tokenizer).save_pretrained(tmp_path / "policy")
    with pytest.raises(CheckpointError, match="holds a 'policy', expected a 'reward_model'"):
        RewardModel.load(tmp_path / "policy")
    rm_dir = tmp_path / "rm"
    RewardModel.from_preset("pythia-tiny", tokenizer).save_pretrained(rm_dir)
    (rm_dir / "value_head.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"value_head\.safetensors is missing"):
        RewardModel.load(rm_dir)
    config = json.loads((rm_dir / CONFIG_NAME).read_text())
    (rm_dir / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        RewardModel.load(rm_dir)
    (rm_dir / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load(rm_dir)

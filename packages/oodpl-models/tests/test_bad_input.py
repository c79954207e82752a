"""Acceptance 7: bad input gives a clear, named error (or documented, counted handling), never a
crash deep inside transformers."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from oodpl.models.collate import CompletionCollator, PreferenceCollator
from oodpl.models.errors import (
    ModelNotCachedError,
    RecordError,
    TokenizerError,
    UnknownArchitectureError,
)
from oodpl.models.loading import load_language_model, resolve_source
from oodpl.models.policy import Policy
from oodpl.models.presets import build_model
from oodpl.models.reward_model import RewardModel

# ------------------------------------------------------------------ tokenizer without pad token


@pytest.fixture
def no_pad_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    assert tok.pad_token_id is None
    return tok


def test_missing_pad_token_pads_with_eos_warns_and_is_recorded(
    tokenizer, no_pad_tokenizer, preferences
):
    rm = RewardModel.from_preset("pythia-tiny", tokenizer, seed=0).eval()
    reference = rm.preference_collator(padding_side="right")(preferences[:4])
    with pytest.warns(UserWarning, match="no pad token; padding with the eos token"):
        collator = PreferenceCollator(no_pad_tokenizer, padding_side="right")
    assert collator.pad_fallback_to_eos and collator.pad_token_id == no_pad_tokenizer.eos_token_id
    batch = collator(preferences[:4])
    padding = ~batch["chosen_attention_mask"].bool()
    assert padding.any() and (batch["chosen_input_ids"][padding] == collator.pad_token_id).all()
    # masks come from lengths, so padding with eos changes nothing downstream
    for key in reference:
        if "mask" in key:
            assert torch.equal(batch[key], reference[key])
    with torch.no_grad():
        torch.testing.assert_close(rm(batch)[0], rm(reference)[0])


def test_missing_pad_token_can_be_an_error(no_pad_tokenizer):
    with pytest.raises(TokenizerError, match="no pad token") as info:
        CompletionCollator(no_pad_tokenizer, missing_pad="error")
    assert isinstance(info.value, ValueError)


def test_generation_and_presets_work_without_pad_token(no_pad_tokenizer):
    with pytest.warns(UserWarning, match="no pad token"):
        policy = Policy.from_preset("gemma-tiny", no_pad_tokenizer, seed=0)
    assert policy.lm.config.pad_token_id == no_pad_tokenizer.eos_token_id
    out = policy.generate(["review 1:", "a much longer review prompt 2:"], max_new_tokens=3)
    assert len(out) == 2


# ------------------------------------------------------------- longer than the model's limit


@pytest.mark.parametrize("side", ["left", "right"])
def test_too_long_sequences_are_truncated_counted_and_reported(tokenizer, preferences, side):
    rm = RewardModel.from_preset("pythia-tiny", tokenizer, max_length=24)
    assert rm.max_positions == 24
    collator = rm.preference_collator(truncation_side=side)
    assert collator.max_length == 24  # min(tokenizer limit 128, model limit 24)
    long = [
        {"prompt": p.prompt * 4, "chosen": p.chosen, "rejected": p.rejected * 3}
        for p in preferences[:4]
    ]
    batch = collator(long)
    assert batch["chosen_input_ids"].shape[1] <= 24
    stats = collator.truncation_stats
    assert stats.n_sequences == 8 and stats.n_prompts_truncated == 8
    assert stats.n_responses_truncated >= 1 and stats.response_tokens_dropped > 0
    assert "prompts truncated" in stats.summary()
    chosen, _ = rm(batch)
    assert torch.isfinite(chosen).all()


def test_untruncated_too_long_batch_is_rejected_by_the_model(tokenizer, preferences):
    policy = Policy.from_preset("pythia-tiny", tokenizer, max_length=16)
    collator = CompletionCollator(tokenizer, max_length=None)
    batch = collator([{"prompt": preferences[0].prompt * 3, "response": "the book"}])
    with pytest.raises(ValueError, match=r"beyond the model's limit of 16 positions.*max_length"):
        policy.sequence_logps(batch)


# ---------------------------------------------------------------------------- empty response


@pytest.mark.parametrize("collator_cls", [PreferenceCollator, CompletionCollator])
def test_empty_response_names_record_index_and_field(tokenizer, collator_cls):
    if collator_cls is PreferenceCollator:
        records = [
            {"prompt": "review 0:", "chosen": "the book", "rejected": "dull"},
            {"prompt": "review 1:", "chosen": "the film", "rejected": "bad"},
            {"prompt": "review 2:", "chosen": "", "rejected": "bad"},
        ]
        field = "chosen"
    else:
        records = [{"prompt": "a", "response": "b"}] * 2 + [{"prompt": "review 2:", "response": ""}]
        field = "response"
    with pytest.raises(RecordError, match=rf"record 2: field '{field}' is empty") as info:
        collator_cls(tokenizer)(records)
    assert isinstance(info.value, ValueError)


def test_missing_and_mistyped_fields(tokenizer):
    with pytest.raises(RecordError, match="record 0: missing field 'response'"):
        CompletionCollator(tokenizer)([{"prompt": "a"}])
    with pytest.raises(RecordError, match="record 1: field 'prompt' must be a str"):
        CompletionCollator(tokenizer)([{"prompt": "a", "response": "b"}, {"prompt": 3}])


def test_batches_without_response_tokens_or_with_wrong_keys(tokenizer, completions):
    rm = RewardModel.from_preset("pythia-tiny", tokenizer)
    batch = rm.completion_collator()(completions[:3])
    empty = {**batch, "response_mask": batch["response_mask"].clone()}
    empty["response_mask"][1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] have no response token"):
        rm.rewards(empty)
    with pytest.raises(ValueError, match="lacks keys \\['response_mask'\\]"):
        rm.rewards({k: v for k, v in batch.items() if k != "response_mask"})
    with pytest.raises(ValueError, match="must hold integers"):
        rm.rewards({**batch, "input_ids": batch["input_ids"].float()})
    pair = rm.preference_collator()([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    with pytest.raises(ValueError, match=r"pair batch.*preference_rewards"):
        rm.rewards(pair)
    t5 = Policy.from_preset("t5-tiny", tokenizer)
    with pytest.raises(ValueError, match=r"decoder_input_ids.*seq2seq"):
        t5.sequence_logps(batch)


# ------------------------------------------------------------------- unknown architectures


def test_unknown_preset_name(tokenizer):
    with pytest.raises(UnknownArchitectureError, match="Did you mean 'gemma-tiny'") as info:
        RewardModel.from_preset("gemma-tinny", tokenizer)
    assert "pythia-tiny" in str(info.value) and "t5-tiny" in str(info.value)


def test_unknown_model_type_in_a_checkpoint(tokenizer, tmp_path):
    model = build_model("pythia-tiny", tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neoxx"}))
    with pytest.raises(UnknownArchitectureError, match=r"config\.json.*Did you mean 'gpt_neox'"):
        RewardModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match=r"no config.json"):
        Policy.from_pretrained(tmp_path)


def test_attn_implementation_typo(tokenizer, tmp_path):
    build_model("pythia-tiny", tokenizer).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attn_implementation"):
        load_language_model(tmp_path, attn_implementation="flash")


# ------------------------------------------------------------------- offline resolution


def test_uncached_hub_id_says_it_cannot_download(tmp_path):
    with pytest.raises(ModelNotCachedError, match="not in the Hugging Face cache") as info:
        RewardModel.from_pretrained("EleutherAI/pythia-14m", cache_dir=tmp_path)
    message = str(info.value)
    assert "cannot download" in message and "EleutherAI/pythia-14m" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileNotFoundError)


def test_missing_local_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        resolve_source(tmp_path / "missing" / "model")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        resolve_source("./not-here")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file"):
        resolve_source(weights)
    with pytest.raises(FileNotFoundError, match=r"gguf_file 'model.gguf' not found"):
        resolve_source(tmp_path, gguf_file="model.gguf")
    with pytest.raises(TypeError, match="name_or_path"):
        resolve_source(3)

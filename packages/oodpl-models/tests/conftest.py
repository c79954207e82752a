"""Shared fixtures for oodpl-models tests: a locally trained tokenizer, fixed records, helpers."""

from __future__ import annotations

import contextlib
import os
import warnings

import pytest
import torch

from oodpl.core.losses import bradley_terry_loss
from oodpl.core.records import Completion, Preference
from oodpl.models.lora import LoraSpec
from oodpl.models.reward_model import RewardModel
from oodpl.models.tokenizer import record_texts, train_bpe_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ARCHITECTURES = ("pythia-tiny", "gemma-tiny", "t5-tiny")


def pytest_generate_tests(metafunc):
    """Any test taking an ``arch`` argument runs once per tiny architecture."""
    if "arch" in metafunc.fixturenames:
        metafunc.parametrize("arch", ARCHITECTURES)


_GOOD = ["great", "wonderful", "sturdy", "delightful", "excellent", "moving", "sharp", "reliable"]
_BAD = ["awful", "boring", "flimsy", "dull", "broken", "noisy", "slow", "tedious"]
_ITEMS = ["book", "dvd", "blender", "kettle", "novel", "film", "toaster", "album"]


def make_preferences(n: int = 16) -> list[Preference]:
    """``n`` fixed, distinct preference pairs with varied lengths."""
    records = []
    for i in range(n):
        item, good, bad = _ITEMS[i % 8], _GOOD[i % 8], _BAD[(3 * i + 1) % 8]
        prompt = f"review {i}: what did you think of the {item}?" + (" be honest." * (i % 3))
        chosen = f"the {item} was {good}" + (" and i would buy it again" if i % 2 else "")
        rejected = f"the {item} was {bad}" + (", sadly" * (i % 4))
        records.append(Preference(prompt, chosen, rejected, domain=_ITEMS[i % 4]))
    return records


def make_completions(n: int = 8) -> list[Completion]:
    return [
        Completion(p.prompt, p.chosen if i % 2 else p.rejected, p.domain)
        for i, p in enumerate(make_preferences(n))
    ]


@pytest.fixture(scope="session")
def tokenizer():
    texts = list(record_texts(make_preferences(32)))
    return train_bpe_tokenizer(texts, vocab_size=400, model_max_length=128)


@pytest.fixture(scope="session")
def preferences() -> list[Preference]:
    return make_preferences(16)


@pytest.fixture(scope="session")
def completions() -> list[Completion]:
    return make_completions(8)


@pytest.fixture(autouse=True)
def _single_thread_and_quiet():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning
    threads slow everything down: one thread per test (restored afterwards), known warnings off."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def perturb_(module: torch.nn.Module, *, seed: int = 1, scale: float = 0.05) -> None:
    """Add seeded Gaussian noise to every trainable parameter (stands in for training, so LoRA
    B matrices and heads are non-zero before save / merge round trips)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def reference_logps_loop(policy, records, *, field: str = "response") -> list[float]:
    """Token-by-token reference: for each record and each response token t, run the plain
    ``transformers`` model on the *unpadded* prefix and take log_softmax at the next token."""
    collator = policy.completion_collator(padding_side="right")
    out = []
    for record in records:
        batch = collator([{"prompt": record.prompt, "response": getattr(record, field)}])
        total = 0.0
        if policy.seq2seq:
            encoder_ids = batch["input_ids"]
            decoder = batch["decoder_input_ids"][0]
            for t in range(1, decoder.shape[0]):
                logits = policy.model(
                    input_ids=encoder_ids, decoder_input_ids=decoder[None, :t]
                ).logits[0, -1]
                total += torch.log_softmax(logits.double(), -1)[decoder[t]].item()
        else:
            ids = batch["input_ids"][0]
            response = batch["response_mask"][0]
            for t in range(1, ids.shape[0]):
                if response[t]:
                    logits = policy.model(input_ids=ids[None, :t]).logits[0, -1]
                    total += torch.log_softmax(logits.double(), -1)[ids[t]].item()
        out.append(total)
    return out


@pytest.fixture(scope="session")
def perturb():
    return perturb_


@pytest.fixture(scope="session")
def logps_loop():
    return reference_logps_loop


@contextlib.contextmanager
def quiet_single_thread():
    """Module fixtures run outside the per-test single-thread fixture above: do the same."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        torch.set_num_threads(threads)


def fixed_reward_model(tokenizer, pairs, steps=40):
    """A well-chosen fixed RM: Bradley-Terry on sentiment preferences (plain AdamW loop)."""
    reward_model = RewardModel.from_preset("pythia-tiny", tokenizer, seed=5, lora=LoraSpec(r=8))
    collator = reward_model.preference_collator()
    optimizer = torch.optim.AdamW(list(reward_model.trainable_parameters().values()), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randperm(len(pairs), generator=generator)[:16].tolist()
        chosen, rejected = reward_model.preference_rewards(collator([pairs[i] for i in index]))
        optimizer.zero_grad()
        bradley_terry_loss(chosen, rejected).backward()
        optimizer.step()
    return reward_model.eval()


@pytest.fixture(scope="session")
def one_quiet_thread():
    """:func:`quiet_single_thread` (one torch thread, FutureWarnings off) for module fixtures."""
    return quiet_single_thread


@pytest.fixture(scope="session")
def train_fixed_reward_model():
    """:func:`fixed_reward_model`: ``(tokenizer, pairs, steps=40) -> RewardModel`` (eval mode)."""
    return fixed_reward_model

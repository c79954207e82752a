"""Reference log-probs cache: equals fresh computation, hits without a forward, invalidates on
model / data / tokenizer / collator change, corrupt files are named, safetensors only."""

from __future__ import annotations

import json
import re
import struct

import pytest
import torch
from safetensors import safe_open

from oodpl.core.records import Preference
from oodpl.models.collate import PreferenceCollator
from oodpl.models.policy import Policy
from oodpl.models.ref_cache import (
    ReferenceCacheError,
    cached_reference_logps,
    checkpoint_digest,
    model_digest,
)
from oodpl.models.tokenizer import record_texts, train_bpe_tokenizer

NAMES = ("chosen_logps", "chosen_n_tokens", "rejected_logps", "rejected_n_tokens")


class ForwardCounter:
    """Counts forward passes of a policy (every forward runs the input embeddings)."""

    def __init__(self, policy: Policy) -> None:
        self.calls = 0
        policy.lm.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1


_POLICIES: dict[str, Policy] = {}


def _policy(tokenizer, arch: str) -> Policy:
    if arch not in _POLICIES:
        _POLICIES[arch] = Policy.from_preset(arch, tokenizer, seed=4)
    return _POLICIES[arch]


def _fresh(policy: Policy, records, collator) -> dict[str, torch.Tensor]:
    return policy.compute_logps([collator(records[i : i + 3]) for i in range(0, len(records), 3)])


@pytest.mark.parametrize("causal_arch", ["pythia-tiny", "gemma-tiny"])
def test_cached_equals_fresh_and_second_run_hits(tmp_path, tokenizer, preferences, causal_arch):
    policy = _policy(tokenizer, causal_arch)
    records = preferences[:7]
    collator = policy.preference_collator()
    counter = ForwardCounter(policy)
    first = cached_reference_logps(
        policy, records, cache_dir=tmp_path, collator=collator, batch_size=3
    )
    assert not first.hit and first.path.is_file() and counter.calls > 0
    fresh = _fresh(policy, records, collator)
    for name in NAMES:
        assert torch.equal(getattr(first, name), fresh[name]), name
    counter.calls = 0
    second = cached_reference_logps(policy, records, cache_dir=tmp_path, batch_size=3)
    assert second.hit and counter.calls == 0 and second.key == first.key
    for name in NAMES:
        assert torch.equal(getattr(second, name), fresh[name]), name
    # padding side changes no token: same key; packed path: its own key, same values to 1e-5
    right = cached_reference_logps(
        policy,
        records,
        cache_dir=tmp_path,
        collator=policy.preference_collator(padding_side="left"),
    )
    assert right.hit
    packed = cached_reference_logps(policy, records, cache_dir=tmp_path, packed=True)
    assert not packed.hit and packed.key != first.key
    assert (packed.chosen_logps - fresh["chosen_logps"]).abs().max() <= 1e-5
    assert torch.equal(packed.rejected_n_tokens, fresh["rejected_n_tokens"])


def test_changes_of_model_data_tokenizer_collator_invalidate(tmp_path, tokenizer, preferences):
    policy = Policy.from_preset("pythia-tiny", tokenizer, seed=5)
    records = preferences[:4]
    base = cached_reference_logps(policy, records, cache_dir=tmp_path)
    keys = {base.key}

    changed = list(records)
    changed[2] = Preference(
        records[2].prompt, records[2].chosen + " indeed", records[2].rejected, domain="x"
    )
    out = cached_reference_logps(policy, changed, cache_dir=tmp_path)
    assert not out.hit
    keys.add(out.key)

    other_tokenizer = train_bpe_tokenizer(
        list(record_texts(preferences)), vocab_size=300, model_max_length=128
    )
    collator = PreferenceCollator(other_tokenizer, **policy.collator_kwargs())
    out = cached_reference_logps(policy, records, cache_dir=tmp_path, collator=collator)
    assert not out.hit
    keys.add(out.key)

    out = cached_reference_logps(
        policy, records, cache_dir=tmp_path, collator=policy.preference_collator(max_length=20)
    )
    assert not out.hit
    keys.add(out.key)

    clone = Policy.from_preset("pythia-tiny", tokenizer, seed=5)
    assert model_digest(clone) == model_digest(policy)  # same weights: same key, a hit
    assert cached_reference_logps(clone, records, cache_dir=tmp_path).hit
    with torch.no_grad():
        next(iter(clone.trainable_parameters().values())).view(-1)[0] += 1e-3
    out = cached_reference_logps(clone, records, cache_dir=tmp_path)
    assert not out.hit
    keys.add(out.key)
    assert len(keys) == 5


def test_lazy_reference_is_not_loaded_on_a_hit(tmp_path, tokenizer, preferences):
    policy = _policy(tokenizer, "pythia-tiny")
    checkpoint = policy.save_pretrained(tmp_path / "ckpt")
    digest = checkpoint_digest(checkpoint)
    loads = []

    def load() -> Policy:
        loads.append(1)
        return Policy.load(checkpoint)

    kwargs = dict(
        cache_dir=tmp_path / "cache",
        collator=policy.preference_collator(),
        model_digest_override=digest,
    )
    first = cached_reference_logps(load, preferences[:3], **kwargs)
    second = cached_reference_logps(load, preferences[:3], **kwargs)
    assert not first.hit and second.hit and len(loads) == 1
    assert torch.equal(first.chosen_logps, second.chosen_logps)
    with pytest.raises(ValueError, match="model_digest_override"):
        cached_reference_logps(load, preferences[:3], cache_dir=tmp_path)


def test_file_is_safetensors_with_metadata(tmp_path, tokenizer, preferences):
    out = cached_reference_logps(
        _policy(tokenizer, "pythia-tiny"), preferences[:3], cache_dir=tmp_path
    )
    raw = out.path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert set(NAMES) <= set(header) and header["__metadata__"]["key"] == out.key
    assert b"\x80\x02" not in raw[:2] and not out.path.name.endswith((".pt", ".pkl", ".bin"))
    with safe_open(out.path, framework="pt") as handle:
        assert sorted(handle.keys()) == sorted(NAMES)
    assert [p.name for p in tmp_path.iterdir()] == [out.path.name]  # no temporary file left


def test_corrupt_file_errors_naming_it_or_recomputes_with_warning(tmp_path, tokenizer, preferences):
    policy = _policy(tokenizer, "pythia-tiny")
    records = preferences[:3]
    good = cached_reference_logps(policy, records, cache_dir=tmp_path)
    good_bytes = good.path.read_bytes()

    good.path.write_bytes(b"garbage, not safetensors")
    with pytest.raises(ReferenceCacheError, match=re.escape(str(good.path))):
        cached_reference_logps(policy, records, cache_dir=tmp_path)
    with pytest.warns(UserWarning, match=re.escape(str(good.path))):
        again = cached_reference_logps(policy, records, cache_dir=tmp_path, on_corrupt="recompute")
    assert not again.hit and torch.equal(again.chosen_logps, good.chosen_logps)
    assert cached_reference_logps(policy, records, cache_dir=tmp_path).hit

    # valid safetensors, wrong content: wrong length, then NaN
    from safetensors.torch import save_file

    meta = {"key": good.key, "format_version": "1"}
    wrong = {name: torch.zeros(2) for name in NAMES}
    save_file(wrong, good.path, metadata=meta)
    with pytest.raises(ReferenceCacheError, match="shape"):
        cached_reference_logps(policy, records, cache_dir=tmp_path)
    nan = {name: torch.zeros(3) for name in NAMES}
    nan["chosen_logps"][1] = float("nan")
    save_file(nan, good.path, metadata=meta)
    with pytest.raises(ReferenceCacheError, match="finite"):
        cached_reference_logps(policy, records, cache_dir=tmp_path)
    good.path.write_bytes(good_bytes)
    assert cached_reference_logps(policy, records, cache_dir=tmp_path).hit


def test_bad_arguments(tmp_path, tokenizer, preferences):
    policy = _policy(tokenizer, "pythia-tiny")
    with pytest.raises(ValueError, match="on_corrupt"):
        cached_reference_logps(policy, preferences[:2], cache_dir=tmp_path, on_corrupt="skip")
    with pytest.raises(ValueError, match="records"):
        cached_reference_logps(policy, [], cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"records\[0\]\.chosen"):
        cached_reference_logps(policy, [{"prompt": "a", "rejected": "b"}], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint directory"):
        checkpoint_digest(tmp_path / "missing")

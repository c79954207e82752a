"""Policy ``π_θ(y | x)``: sequence log-probabilities over response tokens, and generation.

``log π(y|x) = Σ_{t ∈ response} log softmax(W h_{t-1})[y_t]`` and ``n_tokens = |y|`` (METHODS).
The prompt and padding are masked out. Only the response positions' hidden states go through the
LM head, and only those rows are log-softmaxed (in float32): memory ``O(N_response × V)`` instead
of ``O(B × T × V)``. A self-check at construction compares that path with the model's own logits;
an architecture whose head transform is not reproduced falls back to the full logits.

Reference model for DPO (METHODS §2), documented choice: :meth:`Policy.reference_copy` returns a
frozen, eval-mode deep copy of the current policy (adapters included). For a LoRA policy at
initialisation that equals the base model with adapters disabled, which
:meth:`~oodpl.models.backbone.TransformerWrapper.adapters_disabled` gives without a copy; or
precompute reference log-probs once with :meth:`Policy.compute_logps`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from oodpl.models.backbone import (
    TransformerWrapper,
    head_dtype,
    hidden_states,
    output_head_error,
    output_logits,
    position_ids_from_mask,
    scored_sequence,
    to_device,
    unwrap,
    validate_batch,
)
from oodpl.models.collate import _pad, concat_pair_batch, is_pair_batch
from oodpl.models.lora import LoraSpec, apply_lora
from oodpl.models.packed_forward import packed_preference_logps
from oodpl.models.packing import is_packed_batch
from oodpl.models.shared_prefix import is_shared_prefix_batch
from oodpl.models.shared_prefix_forward import shared_prefix_preference_logps
from oodpl.models.tokenizer import resolve_pad_token_id

HEAD_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8}


class Policy(TransformerWrapper):
    """``sequence_logps(batch) -> (sum_logps [B] float32, n_tokens [B] long)`` (float64 sums for a
    float64 LM).

    ``forward`` is :meth:`sequence_logps` for a sequence batch and :meth:`preference_logps` for a
    pair batch, so :meth:`functional_sequence_logps` covers both. Trainable: LoRA adapters (+ LM
    head copy when ``lora.train_lm_head``) or, with ``lora=None``, every weight.
    """

    kind = "policy"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        lora: LoraSpec | None = None,
        seed: int = 0,
    ) -> None:
        if lora is not None and not _is_peft(model):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = apply_lora(unwrap(model), lora, train_lm_head=lora.train_lm_head)
        super().__init__(model, tokenizer, lora)
        error = output_head_error(self.model)
        tolerance = HEAD_CHECK_TOLERANCE.get(self.lm.dtype, 2e-2)
        self.logits_from_hidden = error <= tolerance
        if not self.logits_from_hidden:
            warnings.warn(
                f"{self.lm.config.model_type}: the LM-head shortcut differs from the model's "
                f"logits (relative error {error:.2e}); computing full logits instead",
                UserWarning,
                stacklevel=2,
            )

    # -- construction (from_preset / from_pretrained / load: TransformerWrapper) --------------
    def merged(self) -> Policy:
        """A copy with LoRA (and the trained LM-head copy) merged in; ``lora=None``."""
        from oodpl.models.checkpoint import merge_lora

        return Policy(merge_lora(self.model), self.tokenizer)

    def reference_copy(self) -> Policy:
        """A frozen (requires_grad False), eval-mode deep copy: the DPO reference ``π_ref``."""
        reference = copy.deepcopy(self)
        reference.requires_grad_(False)
        reference.eval()
        return reference

    # -- log-probabilities ---------------------------------------------------------------------
    def token_logps(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token ``log π(y_t | x, y_<t)`` of the response tokens, flattened row-major ``[N]``,
        and the row index of each ``[N]``."""
        validate_batch(batch, seq2seq=self.seq2seq, max_positions=self.max_positions)
        ids, _ = scored_sequence(batch)
        targets_mask = batch["response_mask"][:, 1:].bool()
        if self.logits_from_hidden:
            hidden = hidden_states(self.model, batch)[:, :-1]
            logits = output_logits(self.model, hidden[targets_mask.to(hidden.device)])
        else:
            logits = self._full_logits(batch)[:, :-1][targets_mask.to(self.device)]
        targets = ids[:, 1:][targets_mask].to(logits.device)
        logps = torch.log_softmax(logits.to(head_dtype(logits.dtype)), dim=-1)
        picked = logps.gather(-1, targets[:, None]).squeeze(-1)
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(targets_mask)
        return picked, rows[targets_mask].to(picked.device)

    def _full_logits(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "response_mask"}
        if not self.seq2seq:
            inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
        return self.model(**inputs, use_cache=False).logits

    def sequence_logps(
        self, batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_t log π(y_t | x, y_<t), |y|)`` per row, response tokens only."""
        picked, rows = self.token_logps(batch)
        n_rows = batch["response_mask"].shape[0]
        sums = torch.zeros(n_rows, dtype=picked.dtype, device=picked.device).index_add(
            0, rows, picked
        )
        return sums, batch["response_mask"].sum(dim=1).to(sums.device)

    def preference_logps(
        self, pair_batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(chosen_logps, chosen_n, rejected_logps, rejected_n)`` from one stacked forward (or,
        for a packed batch from :mod:`oodpl.models.packing`, over its padding-free row)."""
        if is_packed_batch(pair_batch):
            return packed_preference_logps(self, pair_batch)
        if is_shared_prefix_batch(pair_batch):
            return shared_prefix_preference_logps(self, pair_batch)
        stacked, n_pairs = concat_pair_batch(pair_batch)
        logps, n_tokens = self.sequence_logps(stacked)
        return logps[:n_pairs], n_tokens[:n_pairs], logps[n_pairs:], n_tokens[n_pairs:]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if is_pair_batch(batch) or is_packed_batch(batch) or is_shared_prefix_batch(batch):
            return self.preference_logps(batch)
        return self.sequence_logps(batch)

    def functional_sequence_logps(
        self, params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`forward` with ``params`` (names from :meth:`trainable_parameters`) swapped in."""
        return self.functional_call(params, batch)

    @torch.no_grad()
    def compute_logps(
        self, batches: Iterable[Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Log-probs over many batches in eval mode (e.g. DPO reference log-probs, precomputed).

        Sequence batches give ``{"logps", "n_tokens"}``; pair batches ``{"chosen_logps",
        "chosen_n_tokens", "rejected_logps", "rejected_n_tokens"}``; concatenated in order, on CPU.
        """
        was_training = self.training
        self.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        try:
            for batch in batches:
                batch = to_device(batch, self.device)
                if is_pair_batch(batch) or is_packed_batch(batch) or is_shared_prefix_batch(batch):
                    names = (
                        "chosen_logps",
                        "chosen_n_tokens",
                        "rejected_logps",
                        "rejected_n_tokens",
                    )
                    outputs = dict(zip(names, self.preference_logps(batch), strict=True))
                else:
                    outputs = dict(
                        zip(("logps", "n_tokens"), self.sequence_logps(batch), strict=True)
                    )
                if parts and parts.keys() != outputs.keys():
                    raise ValueError("batches mix pair batches and sequence batches")
                for key, value in outputs.items():
                    parts.setdefault(key, []).append(value.cpu())
        finally:
            self.train(was_training)
        if not parts:
            raise ValueError("batches is empty")
        return {key: torch.cat(values) for key, values in parts.items()}

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        seed: int | None = None,
        add_bos: bool = False,
    ) -> list[list[str]]:
        """Sample responses: ``result[i][j]`` is the j-th response (decoded, special tokens
        removed) to ``prompts[i]``. ``temperature=0`` decodes greedily. ``seed`` makes sampling
        reproducible without touching the global RNG state."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
            raise ValueError("prompts must be a non-empty sequence of strings")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"prompts[{index}] must be a non-empty string")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
            raise ValueError(
                f"num_return_sequences must be an int >= 1, got {num_return_sequences!r}"
            )
        pad_id, _ = resolve_pad_token_id(self.tokenizer)
        bos = (
            [self.tokenizer.bos_token_id]
            if add_bos and self.tokenizer.bos_token_id is not None
            else []
        )
        rows = [
            bos + list(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts
        ]
        for index, row in enumerate(rows):
            if not row:
                raise ValueError(f"prompts[{index}] tokenises to no tokens")
        side = "right" if self.seq2seq else "left"
        input_ids = _pad(rows, pad_id, side, None).to(self.device)
        attention_mask = _pad([[1] * len(r) for r in rows], 0, side, None).to(self.device)
        sample = temperature > 0
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sample,
            "num_return_sequences": num_return_sequences,
            "pad_token_id": pad_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if sample:
            options.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        was_training = self.training
        self.eval()
        try:
            with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
                if seed is not None:
                    torch.manual_seed(seed)
                output = self.lm.generate(
                    input_ids=input_ids, attention_mask=attention_mask, **options
                )
        finally:
            self.train(was_training)
        new_tokens = output if self.seq2seq else output[:, input_ids.shape[1] :]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [
            texts[i * num_return_sequences : (i + 1) * num_return_sequences]
            for i in range(len(prompts))
        ]


def _is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


__all__ = ["Policy"]

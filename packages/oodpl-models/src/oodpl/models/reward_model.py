"""Explicit reward model ``r_φ(x, y)`` (EXRM, METHODS §1).

``r_φ(x, y) = w · h_last(x ⊕ y) + b``: a scalar value head on the final hidden state of the last
non-padding token of ``x ⊕ y`` for causal LMs; for T5, on the decoder's last non-padding position
with ``y`` as decoder input and ``x`` as encoder input. Only the transformer body runs (no LM
logits). Chosen and rejected responses go through one concatenated forward pass.

Trainable parameters: LoRA adapters + value head (``lora=LoraSpec(...)``, as in [OODPL]) or every
weight the reward uses + value head (``lora=None``; an untied LM head is frozen since the reward
never reads it).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from oodpl.models.backbone import (
    TransformerWrapper,
    head_dtype,
    hidden_states,
    last_token_index,
    scored_sequence,
    to_device,
    unwrap,
    validate_batch,
)
from oodpl.models.collate import concat_pair_batch, is_pair_batch
from oodpl.models.last_layer import scored_positions_only
from oodpl.models.lora import LoraSpec, apply_lora
from oodpl.models.packed_forward import packed_rewards
from oodpl.models.packing import is_packed_batch
from oodpl.models.shared_prefix import is_shared_prefix_batch
from oodpl.models.shared_prefix_forward import shared_prefix_rewards

VALUE_HEAD = "value_head"


def _new_value_head(hidden_size: int, seed: int) -> nn.Linear:
    """Linear(H, 1) with weights ~ N(0, 1/(H+1)) drawn from ``seed`` and zero bias."""
    head = nn.Linear(hidden_size, 1, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(
            torch.randn(head.weight.shape, generator=generator) / (hidden_size + 1) ** 0.5
        )
        head.bias.zero_()
    return head


class RewardModel(TransformerWrapper):
    """``rewards(batch) -> [B]``, ``preference_rewards(pair_batch) -> ([B], [B])`` (METHODS §1).

    ``forward(batch)`` is :meth:`rewards` for a sequence batch and :meth:`preference_rewards` for a
    pair batch, so :meth:`functional_rewards` (``torch.func.functional_call``) covers both.
    Rewards are float32 (the value head runs in float32 whatever the LM's dtype; float64 for a
    float64 LM, e.g. for finite-difference checks).
    """

    kind = "reward_model"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        lora: LoraSpec | None = None,
        value_head: nn.Linear | None = None,
        seed: int = 0,
    ) -> None:
        lm = unwrap(model)
        if lora is not None and not _is_peft(model):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = apply_lora(lm, lora, train_lm_head=False)
        elif lora is None:
            out_emb, in_emb = lm.get_output_embeddings(), lm.get_input_embeddings()
            if out_emb is not None and out_emb.weight is not in_emb.weight:
                out_emb.requires_grad_(False)  # the reward never reads the LM head
        super().__init__(model, tokenizer, lora)
        hidden_size = int(lm.config.get_text_config().hidden_size)
        if value_head is None:
            value_head = _new_value_head(hidden_size, seed)
        if not isinstance(value_head, nn.Linear) or value_head.out_features != 1:
            raise TypeError("value_head must be an nn.Linear(hidden_size, 1)")
        if value_head.in_features != hidden_size:
            raise ValueError(
                f"value_head has in_features {value_head.in_features}, the LM's hidden size is "
                f"{hidden_size}"
            )
        self.value_head = value_head.to(device=self.device, dtype=head_dtype(self.lm.dtype))
        self.value_head.requires_grad_(True)

    # -- construction (from_preset / from_pretrained / load: TransformerWrapper) --------------
    @classmethod
    def _from_checkpoint(cls, loaded: Any, directory: str | os.PathLike[str]) -> RewardModel:
        """The reward model of a loaded checkpoint, value head from ``value_head.safetensors``."""
        from oodpl.models.checkpoint import CheckpointError

        state = loaded.tensors.get(VALUE_HEAD)
        if state is None or set(state) != {"weight", "bias"}:
            raise CheckpointError(f"{directory}: value_head.safetensors needs 'weight' and 'bias'")
        head = nn.Linear(state["weight"].shape[1], 1, dtype=state["weight"].dtype)
        head.load_state_dict(state)
        return cls(loaded.model, loaded.tokenizer, lora=loaded.lora, value_head=head)

    def _extra_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {VALUE_HEAD: dict(self.value_head.state_dict())}

    def merged(self) -> RewardModel:
        """A copy with LoRA merged into the weights (``lora=None``); rewards unchanged."""
        from oodpl.models.checkpoint import merge_lora

        return RewardModel(
            merge_lora(self.model), self.tokenizer, value_head=copy.deepcopy(self.value_head)
        )

    # -- rewards -------------------------------------------------------------------------------
    def rewards(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``r_φ(x, y)`` for each row of a sequence batch -> float32 ``[B]``."""
        validate_batch(batch, seq2seq=self.seq2seq, max_positions=self.max_positions)
        _, mask = scored_sequence(batch)
        last = last_token_index(mask)
        rows = torch.arange(last.shape[0], device=last.device)
        with scored_positions_only(self.model, rows, last):  # the last layer at `last` only
            hidden = hidden_states(self.model, batch)
        pooled = hidden[rows.to(hidden.device), last.to(hidden.device)]
        return self.value_head(pooled.to(self.value_head.weight.dtype)).squeeze(-1)

    def preference_rewards(
        self, pair_batch: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r(x, y_w), r(x, y_l))`` from one forward over the stacked pair batch (or, for a
        packed batch from :mod:`oodpl.models.packing` or :mod:`oodpl.models.shared_prefix`, over
        its padding-free row)."""
        if is_packed_batch(pair_batch):
            return packed_rewards(self, pair_batch)
        if is_shared_prefix_batch(pair_batch):
            return shared_prefix_rewards(self, pair_batch)
        stacked, n_pairs = concat_pair_batch(pair_batch)
        scores = self.rewards(stacked)
        return scores[:n_pairs], scores[n_pairs:]

    def forward(
        self, batch: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if is_pair_batch(batch) or is_packed_batch(batch) or is_shared_prefix_batch(batch):
            return self.preference_rewards(batch)
        return self.rewards(batch)

    def functional_rewards(
        self, params: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with ``params`` (names from :meth:`trainable_parameters`) swapped in."""
        return self.functional_call(params, batch)

    @torch.no_grad()
    def compute_rewards(
        self, batches: Iterable[Mapping[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Rewards over many batches in eval mode: ``{"rewards"}`` or ``{"chosen_rewards",
        "rejected_rewards"}`` for pair batches (concatenated in order, on the CPU)."""
        was_training = self.training
        self.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        try:
            for batch in batches:
                batch = to_device(batch, self.device)
                if is_pair_batch(batch) or is_packed_batch(batch) or is_shared_prefix_batch(batch):
                    chosen, rejected = self.preference_rewards(batch)
                    outputs = {"chosen_rewards": chosen, "rejected_rewards": rejected}
                else:
                    outputs = {"rewards": self.rewards(batch)}
                if parts and parts.keys() != outputs.keys():
                    raise ValueError("batches mix pair batches and sequence batches")
                for key, value in outputs.items():
                    parts.setdefault(key, []).append(value.cpu())
        finally:
            self.train(was_training)
        if not parts:
            raise ValueError("batches is empty")
        return {key: torch.cat(values) for key, values in parts.items()}


def _is_peft(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


__all__ = ["RewardModel"]

"""Forward passes shared by :class:`RewardModel` and :class:`Policy`.

Both read the final hidden states of the *scored sequence* (``input_ids`` for causal LMs,
``decoder_input_ids`` for T5, see :mod:`oodpl.models.collate`) from the transformer body, without
computing LM logits: the reward model applies a value head at the last non-padding position, the
policy applies the LM head to the response positions only (:func:`output_logits`).

Causal LMs get ``position_ids = cumsum(attention_mask) - 1`` so that left padding gives the same
positions as no padding (needed by absolute-position models; harmless for rotary ones).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from oodpl.models.collate import Batch, CompletionCollator, PreferenceCollator
from oodpl.models.lora import LoraSpec, functional_forward, trainable_parameters
from oodpl.models.presets import build_model, check_attn_implementation

CAUSAL_KEYS = ("input_ids", "attention_mask", "response_mask")
SEQ2SEQ_KEYS = (*CAUSAL_KEYS, "decoder_input_ids", "decoder_attention_mask")


def unwrap(model: nn.Module) -> PreTrainedModel:
    """The ``transformers`` model inside a (possibly peft-wrapped) model."""
    if isinstance(model, PeftModel):
        return model.get_base_model()
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    return model


def is_seq2seq(model: nn.Module) -> bool:
    return bool(getattr(unwrap(model).config, "is_encoder_decoder", False))


def recomputes_layers(model: nn.Module) -> bool:
    """Whether a backward pass would re-run layers (activation checkpointing while training)."""
    lm = unwrap(model)
    return torch.is_grad_enabled() and any(
        getattr(m, "gradient_checkpointing", False) and m.training for m in lm.modules()
    )


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among the real tokens of its row (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def head_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of heads and log-softmax: float32, or float64 for a float64 model."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def scored_sequence(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the sequence whose tokens are scored (decoder side for T5)."""
    if "decoder_input_ids" in batch:
        return batch["decoder_input_ids"], batch["decoder_attention_mask"]
    return batch["input_ids"], batch["attention_mask"]


def validate_batch(
    batch: Mapping[str, torch.Tensor],
    *,
    seq2seq: bool,
    max_positions: int | None = None,
    name: str = "batch",
) -> None:
    """Check keys, shapes, masks and lengths of a sequence batch; ValueError naming the key."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"{name} must be a mapping of tensors, got {type(batch).__name__}")
    if "chosen_input_ids" in batch:
        raise ValueError(
            f"{name} is a pair batch (chosen_*/rejected_* keys); use preference_rewards / "
            "preference_logps, or split_pair_batch"
        )
    required = SEQ2SEQ_KEYS if seq2seq else CAUSAL_KEYS
    missing = [k for k in required if k not in batch]
    if missing:
        kind = "seq2seq" if seq2seq else "causal"
        raise ValueError(f"{name} lacks keys {missing} needed by a {kind} model")
    for key in required:
        value = batch[key]
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            raise ValueError(f"{name}[{key!r}] must be a 2-D tensor [B, T]")
        if value.dtype.is_floating_point or value.dtype.is_complex:
            raise ValueError(f"{name}[{key!r}] must hold integers, got {value.dtype}")
    ids, mask = scored_sequence(batch)
    response = batch["response_mask"]
    if ids.shape != mask.shape or ids.shape != response.shape:
        raise ValueError(
            f"{name}: ids {tuple(ids.shape)}, attention mask {tuple(mask.shape)} and "
            f"response_mask {tuple(response.shape)} must have one shape"
        )
    if batch["input_ids"].shape != batch["attention_mask"].shape:
        raise ValueError(f"{name}['input_ids'] and {name}['attention_mask'] differ in shape")
    if ids.shape[0] == 0:
        raise ValueError(f"{name} is empty (batch size 0)")
    counts = response.sum(dim=1)
    if bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"{name}['response_mask'] rows {rows} have no response token")
    if bool(response[:, 0].any()):
        raise ValueError(f"{name}['response_mask'][:, 0] must be 0 (position 0 has no predecessor)")
    if bool((response.bool() & ~mask.bool()).any()):
        raise ValueError(f"{name}['response_mask'] marks padding positions")
    if max_positions is not None:
        longest = int(batch["attention_mask"].sum(dim=1).max())
        if longest > max_positions:
            raise ValueError(
                f"{name}['input_ids'] has a sequence of {longest} tokens, beyond the model's "
                f"limit of {max_positions} positions (max_position_embeddings); collate with "
                f"max_length <= {max_positions} to truncate (model.preference_collator() and "
                "model.completion_collator() do so)"
            )


@functools.lru_cache(maxsize=64)
def _accepts_position_ids(forward_cls: type) -> bool:
    parameters = inspect.signature(forward_cls.forward).parameters
    return "position_ids" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def hidden_states(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Final hidden states ``[B, T, H]`` of the scored sequence (no LM logits computed)."""
    lm = unwrap(model)
    if getattr(lm.config, "is_encoder_decoder", False):
        encoded = lm.get_encoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        return (
            lm.get_decoder()(
                input_ids=batch["decoder_input_ids"],
                attention_mask=batch["decoder_attention_mask"],
                encoder_hidden_states=encoded,
                encoder_attention_mask=batch["attention_mask"],
                use_cache=False,
            )
        ).last_hidden_state
    body = lm.base_model
    kwargs: dict[str, torch.Tensor | bool] = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }
    if _accepts_position_ids(type(body)):
        kwargs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
    if body is lm:  # no separate body module: ask the full model for its last hidden states
        return lm(**kwargs, output_hidden_states=True).hidden_states[-1]
    return body(**kwargs).last_hidden_state


def output_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on selected hidden states ``[..., H] -> [..., V]``, as the model's forward does.

    Reproduces the transforms ``transformers`` applies between the body and the logits: T5's
    ``d_model**-0.5`` rescaling (``scale_decoder_outputs``), final-logit soft-capping (Gemma 2/3),
    ``logit_scale`` (Cohere) and ``logits_scaling`` (Granite). :func:`check_output_head` verifies
    the result against the model's own logits.
    """
    lm = unwrap(model)
    config = lm.config
    if getattr(config, "is_encoder_decoder", False) and getattr(
        config, "scale_decoder_outputs", False
    ):
        hidden = hidden * (config.d_model**-0.5)
    logits = lm.get_output_embeddings()(hidden)
    if getattr(config, "logit_scale", None) is not None:
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) is not None:
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def probe_batch(model: nn.Module, length: int = 4) -> Batch:
    """A tiny valid batch (token ids 0..length-1) for self-checks."""
    lm = unwrap(model)
    device = next(lm.parameters()).device
    ids = torch.arange(length, device=device).remainder(lm.config.vocab_size)[None, :]
    ones = torch.ones_like(ids)
    response = torch.zeros_like(ids)
    response[:, 1:] = 1
    batch: Batch = {"input_ids": ids, "attention_mask": ones, "response_mask": response}
    if getattr(lm.config, "is_encoder_decoder", False):
        batch["decoder_input_ids"] = ids.clone()
        batch["decoder_attention_mask"] = ones.clone()
    return batch


@torch.no_grad()
def output_head_error(model: nn.Module, batch: Mapping[str, torch.Tensor] | None = None) -> float:
    """Max |logits via hidden states + :func:`output_logits` - the model's own logits|, relative
    to the largest logit magnitude (so fp32 agreement is ~1e-7 and a missed transform is ~1)."""
    lm = unwrap(model)
    batch = dict(batch) if batch is not None else probe_batch(model)
    was_training = lm.training
    lm.eval()
    try:
        mine = output_logits(model, hidden_states(model, batch))
        inputs = {k: v for k, v in batch.items() if k != "response_mask"}
        if not getattr(lm.config, "is_encoder_decoder", False):
            inputs["position_ids"] = position_ids_from_mask(batch["attention_mask"])
        theirs = model(**inputs, use_cache=False).logits
    finally:
        lm.train(was_training)
    mask = scored_sequence(batch)[1].bool()
    mine, theirs = mine[mask].float(), theirs[mask].float()
    return float((mine - theirs).abs().max() / theirs.abs().max().clamp(min=1.0))


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> Batch:
    """``batch`` with every tensor moved to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class TransformerWrapper(nn.Module):
    """What :class:`RewardModel` and :class:`Policy` share: the LM, its tokenizer, LoRA, I/O.

    ``self.model`` is the ``transformers`` LM, peft-wrapped when ``self.lora`` is a
    :class:`~oodpl.models.lora.LoraSpec`. Parameter names in :meth:`trainable_parameters` are those
    of ``self.named_parameters()``, so they can be passed to :meth:`functional_call`.
    """

    kind: ClassVar[str] = ""

    def __init__(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, lora: LoraSpec | None
    ) -> None:
        super().__init__()
        unwrap(model)  # type check
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise TypeError(
                f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}"
            )
        if isinstance(model, PeftModel) and lora is None:
            raise ValueError("model is peft-wrapped: pass the LoraSpec it was built with as lora")
        self.model = model
        self.tokenizer = tokenizer
        self.lora = lora

    # -- introspection -------------------------------------------------------------------------
    @property
    def lm(self) -> PreTrainedModel:
        """The ``transformers`` model (adapters injected when LoRA is on)."""
        return unwrap(self.model)

    @property
    def seq2seq(self) -> bool:
        return bool(getattr(self.lm.config, "is_encoder_decoder", False))

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def max_positions(self) -> int | None:
        """Longest causal sequence the model accepts (None: no fixed limit, e.g. T5)."""
        if self.seq2seq:
            return None
        limit = getattr(self.lm.config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch attention kernels, e.g. to ``"eager"`` for exact HVPs on GPU (METHODS §3)."""
        check_attn_implementation(attn_implementation)
        self.lm.set_attn_implementation(attn_implementation)

    # -- parameters and functional calls --------------------------------------------------------
    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        """``{name: parameter}`` of everything that trains (adapters + head, or all weights)."""
        return trainable_parameters(self)

    def functional_call(self, params: Mapping[str, torch.Tensor], *args: Any) -> Any:
        """``self(*args)`` with ``params`` replacing the named parameters (torch.func-friendly)."""
        return functional_forward(self, params, *args)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        """Run the base model: LoRA adapters (and the trained LM-head copy) switched off."""
        if not isinstance(self.model, PeftModel):
            raise ValueError(f"{type(self).__name__} has no LoRA adapter to disable (lora=None)")
        with self.model.disable_adapter():
            yield

    # -- collators -----------------------------------------------------------------------------
    def collator_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Collator settings matching this model (family, decoder start, length limit)."""
        config = self.lm.config
        kwargs: dict[str, Any] = {"family": "seq2seq" if self.seq2seq else "causal"}
        if self.seq2seq:
            start = getattr(config, "decoder_start_token_id", None)
            kwargs["decoder_start_token_id"] = start if start is not None else config.pad_token_id
        limits = [int(self.tokenizer.model_max_length)]
        if getattr(config, "max_position_embeddings", None):
            limits.append(int(config.max_position_embeddings))
        if min(limits) < 10**9:
            kwargs["max_length"] = min(limits)
        kwargs.update(overrides)
        return kwargs

    def preference_collator(self, **overrides: Any) -> PreferenceCollator:
        return PreferenceCollator(self.tokenizer, **self.collator_kwargs(**overrides))

    def completion_collator(self, **overrides: Any) -> CompletionCollator:
        return CompletionCollator(self.tokenizer, **self.collator_kwargs(**overrides))

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_preset(
        cls,
        name: str,
        tokenizer: PreTrainedTokenizerBase,
        *,
        seed: int = 0,
        lora: LoraSpec | None = None,
        attn_implementation: str = "sdpa",
        dtype: torch.dtype = torch.float32,
        max_length: int | None = None,
    ) -> Self:
        """A model on preset ``name`` (see :mod:`oodpl.models.presets`), random weights from
        ``seed`` (for a reward model, a fresh value head too)."""
        lm = build_model(
            name,
            tokenizer,
            seed=seed,
            attn_implementation=attn_implementation,
            dtype=dtype,
            max_length=max_length,
        )
        return cls(lm, tokenizer, lora=lora, seed=seed)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        lora: LoraSpec | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        seed: int = 0,
        **load_kwargs: Any,
    ) -> Self:
        """A real LM (local dir, ``.gguf`` or HF cache; never downloads); a reward model gets a
        fresh value head.

        ``load_kwargs`` go to :func:`oodpl.models.loading.load_language_model` (``gguf_file``,
        ``dtype``, ``attn_implementation``, ``trust_remote_code``, ``revision``, ``cache_dir``).
        An oodpl checkpoint directory is loaded with :meth:`load` instead.
        """
        from oodpl.models.checkpoint import CONFIG_NAME
        from oodpl.models.loading import load_language_model, load_tokenizer

        if os.path.isfile(os.path.join(os.fspath(name_or_path), CONFIG_NAME)):
            return cls.load(name_or_path)
        lm = load_language_model(name_or_path, **load_kwargs)
        if tokenizer is None:
            keys = ("gguf_file", "trust_remote_code", "revision", "cache_dir")
            tokenizer = load_tokenizer(
                name_or_path, **{k: v for k, v in load_kwargs.items() if k in keys}
            )
        return cls(lm, tokenizer, lora=lora, seed=seed)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        attn_implementation: str | None = None,
        trainable: bool = True,
    ) -> Self:
        """Load a checkpoint written by :meth:`save_pretrained`."""
        from oodpl.models.checkpoint import load_checkpoint

        loaded = load_checkpoint(
            directory,
            kind=cls.kind,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trainable=trainable,
        )
        return cls._from_checkpoint(loaded, directory)

    @classmethod
    def _from_checkpoint(cls, loaded: Any, directory: str | os.PathLike[str]) -> Self:
        """The model from a :class:`~oodpl.models.checkpoint.LoadedCheckpoint` (heads: override)."""
        return cls(loaded.model, loaded.tokenizer, lora=loaded.lora)

    # -- persistence ---------------------------------------------------------------------------
    def _extra_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {}

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Save in safetensors (see :mod:`oodpl.models.checkpoint` for the layout)."""
        from oodpl.models.checkpoint import save_checkpoint

        return save_checkpoint(
            directory,
            kind=self.kind,
            model=self.model,
            tokenizer=self.tokenizer,
            lora=self.lora,
            tensors=self._extra_tensors(),
        )

    def merge_and_save(self, directory: str | os.PathLike[str]) -> Path:
        """Merge LoRA into the weights and save a full checkpoint (heads kept)."""
        return self.merged().save_pretrained(directory)

    def merged(self) -> TransformerWrapper:  # pragma: no cover - overridden
        raise NotImplementedError

"""LoRA through peft, named trainable-parameter dicts, and functional calls for ``torch.func``.

[OODPL] trains a LoRA adapter plus the value head (reward model) or plus the LM head (policy);
``LoraSpec(...)`` selects that, ``lora=None`` means full fine-tuning. The trainable parameters of a
model are exposed as a ``dict[str, Tensor]`` keyed by ``named_parameters()`` names, and
:func:`functional_forward` runs a module with some of them replaced
(``torch.func.functional_call``, the remaining parameters and buffers taken from the module), which
is what ``oodpl.core.hypergrad`` differentiates through (METHODS §3).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from oodpl.models.errors import suggestion_suffix

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA adapter: rank ``r``, scaling ``alpha / r``, on ``target_modules``.

    ``target_modules=None`` uses peft's default for the architecture (GPT-NeoX:
    ``query_key_value``; Gemma/Llama: ``q_proj, v_proj``; T5: ``q, v``). ``train_lm_head`` (policies
    only) also trains a copy of the LM head (peft ``modules_to_save``), as in [OODPL]. With tied
    embeddings (Gemma, T5) the trained copy is untied from the input embeddings, which stay
    frozen (peft's ``ensure_weight_tying`` breaks T5's shared embeddings in peft 0.21, so it is
    not used); merging writes an untied checkpoint (``tie_word_embeddings=False``).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    train_lm_head: bool = True
    bias: str = "none"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoraSpec.r must be an int >= 1, got {self.r!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be > 0, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(
                f"LoraSpec.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}"
            )
        if self.target_modules is not None:
            targets = self.target_modules
            if isinstance(targets, str):
                targets = (targets,)
            if not all(isinstance(t, str) and t for t in targets) or not targets:
                raise ValueError("LoraSpec.target_modules must be None or non-empty strings")
            object.__setattr__(self, "target_modules", tuple(targets))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules) if self.target_modules else None
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LoraSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LoraSpec fields {unknown}; known: {sorted(known)}")
        values = dict(values)
        if values.get("target_modules") is not None:
            values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)


def module_name_of(model: nn.Module, target: nn.Module) -> str:
    """The qualified name of submodule ``target`` inside ``model``."""
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError(f"module {type(target).__name__} is not part of {type(model).__name__}")


@contextlib.contextmanager
def intended_untying() -> Iterator[None]:
    """Silence peft's warnings about the LM-head copy untying tied embeddings (intended, see
    :class:`LoraSpec`), about base models without a config.json next to them (GGUF files), and
    the FutureWarning transformers 5 raises when peft reads the deprecated
    ``is_gradient_checkpointing`` property (peft's call, nothing the user can change); other
    warnings pass through."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*")
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        warnings.filterwarnings("ignore", message=".*no longer tied after merging.*")
        warnings.filterwarnings("ignore", message="Could not find a config file in .*vocabulary")
        yield


def apply_lora(model: PreTrainedModel, spec: LoraSpec, *, train_lm_head: bool) -> PeftModel:
    """Wrap ``model`` with a fresh LoRA adapter (B = 0, so outputs are unchanged at first)."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    if not isinstance(spec, LoraSpec):
        raise TypeError(f"lora must be a LoraSpec or None, got {type(spec).__name__}")
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    modules_to_save = None
    if train_lm_head:
        modules_to_save = [module_name_of(model, model.get_output_embeddings())]
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules) if spec.target_modules else None,
        bias=spec.bias,
        modules_to_save=modules_to_save,
        task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        **dict(spec.extra),
    )
    try:
        with intended_untying():
            return get_peft_model(model, config)
    except ValueError as error:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"cannot apply LoRA to model_type {model.config.model_type!r}: {error}. Set "
            f"LoraSpec.target_modules to some of its linear layers: {linear}"
        ) from error


def trainable_parameters(module: nn.Module) -> Params:
    """``{name: parameter}`` for every parameter with ``requires_grad`` (live tensors)."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def check_param_names(module: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """ValueError naming any key of ``params`` that is not a parameter of ``module``."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping of name -> tensor, got {type(params).__name__}")
    names = dict(module.named_parameters(remove_duplicate=False))
    for key, value in params.items():
        if key not in names:
            raise ValueError(
                f"params key {key!r} is not a parameter of {type(module).__name__}."
                f"{suggestion_suffix(key, names)}"
            )
        if not isinstance(value, torch.Tensor) or value.shape != names[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"params[{key!r}] has shape {shape}, expected {tuple(names[key].shape)}"
            )


def functional_forward(
    module: nn.Module, params: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any
) -> Any:
    """``module(*args, **kwargs)`` with the tensors of ``params`` in place of its parameters.

    Parameters and buffers not in ``params`` are the module's own; tied weights follow their tie.
    Differentiable with ``torch.autograd`` and ``torch.func`` (grad, vjp, jvp) w.r.t. ``params``.
    """
    check_param_names(module, params)
    return torch.func.functional_call(module, dict(params), args, kwargs, tie_weights=True)


@contextlib.contextmanager
def second_order_attention() -> Iterator[None]:
    """Restrict SDPA to its math kernel, which has a double backward (METHODS §3).

    The fused SDPA kernels (flash / efficient / cuDNN, and the flash kernel PyTorch picks on CPU)
    have no derivative of their backward, so Hessian-vector products through a model built with
    ``attn_implementation="sdpa"`` fail outside this context. ``oodpl.core.hypergrad`` applies
    the same restriction itself, only around the steps it differentiates twice (so its inner
    steps keep the fused kernels); use this context for your own double backward (e.g. autograd
    through a whole unrolled graph). ``"eager"`` attention works without it (its softmax runs in
    float32, so float64 checks are limited to ~1e-7 relative precision).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def detached_copy(params: Mapping[str, torch.Tensor], *, requires_grad: bool = True) -> Params:
    """Fresh leaf copies of ``params`` (e.g. an inner-loop starting point ``theta_0``)."""
    return {k: v.detach().clone().requires_grad_(requires_grad) for k, v in params.items()}


def set_parameters(module: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Copy ``params`` into ``module``'s parameters in place (no autograd history)."""
    check_param_names(module, params)
    named = dict(module.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for key, value in params.items():
            named[key].copy_(value)


def freeze(module: nn.Module, *, except_names: Sequence[str] = ()) -> None:
    """``requires_grad = False`` on every parameter of ``module`` except ``except_names``."""
    keep = set(except_names)
    for name, p in module.named_parameters():
        p.requires_grad_(name in keep)

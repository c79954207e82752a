"""Run the last decoder layer's position-wise parts only where a reward is read.

A reward model reads the final hidden state at ONE position per sequence (its last token).
Every other position's output of the last decoder layer is computed and thrown away: its
attention output projection and its MLP (``9H²`` of the layer's ``12H²`` multiply-adds per token
for a standard block, i.e. about a third of a 2-layer model's body, 1/16 of a 12-layer one).
Both are position-wise, so evaluating them on the scored positions only gives the same
scores and the same gradients (the discarded positions contribute nothing to either).

:func:`scored_positions_only` does this with module hooks, for the duration of one forward:

* a forward pre-hook on the last layer's MLP and attention output projection gathers their input
  at the scored positions, ``x[rows, cols] -> [M, 1, H]`` (padded batches: ``M = B``, so the
  leading dimension still indexes the samples);
* a forward hook scatters the ``[M, 1, H]`` output back into a zero ``[B, S, H]`` tensor
  (``index_put``, differentiable), which the layer adds to its residual stream. Positions are
  de-duplicated first (a position scored twice must receive its gradient once).

Not used for policies: their log-probs read the predictor positions of every response token,
about two thirds of a pair's positions with the prompt shared, and on the tiny presets the
gather/scatter cost as much as the skipped MLP rows saved (measured: 67–72 ms per step either
way).

The last layer's hidden states are therefore exact at the scored positions and
meaningless elsewhere; callers read only the scored positions. Attention itself still runs
over every position (its keys and values are needed at all of them).

It is a no-op (the full layer runs) when:

* the architecture is not one whose layout is known here (GPT-NeoX/Pythia: ``attention.dense`` and
  ``mlp``; Llama-style decoders incl. Gemma, Mistral, Qwen: ``self_attn.o_proj`` and ``mlp``);
* the model is encoder-decoder (T5);
* activation checkpointing would re-run the layer in the backward pass, after the hooks are gone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from oodpl.models.backbone import recomputes_layers, unwrap

_OUTPUT_PROJECTIONS = ("attention.dense", "self_attn.o_proj")
_POSITION_STRIDE = 1 << 31  # > any sequence length: (row, col) -> row * stride + col is unique


def position_wise_parts(model: nn.Module) -> tuple[nn.Module, ...]:
    """The last decoder layer's attention output projection and MLP, or ``()`` when the layout
    is not known (module docstring)."""
    lm = unwrap(model)
    if getattr(lm.config, "is_encoder_decoder", False):
        return ()
    layers = getattr(lm.base_model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return ()
    last = layers[-1]
    named = dict(last.named_modules())
    projection = next((named[n] for n in _OUTPUT_PROJECTIONS if n in named), None)
    mlp = named.get("mlp")
    if projection is None or mlp is None:
        return ()
    return (projection, mlp)


@contextlib.contextmanager
def scored_positions_only(
    model: nn.Module, rows: torch.Tensor, cols: torch.Tensor
) -> Iterator[bool]:
    """Within the block, the last layer's position-wise parts run only at ``(rows, cols)``.

    Args:
        model: a causal LM (``PreTrainedModel`` or peft-wrapped).
        rows, cols: ``[M]`` long tensors: the scored positions of the ``[B, S, H]`` hidden
            states (``rows = 0`` for a packed single-row batch).

    Yields whether the restriction is active (False: the full layer runs; module docstring).
    """
    parts = () if recomputes_layers(model) else position_wise_parts(model)
    if not parts:
        yield False
        return
    # each position once: a scatter with repeated indices would send the gradient of a position
    # read twice (two scores at one position) to both copies. 1-D unique of a packed key: cheap.
    key = torch.unique(rows.long() * _POSITION_STRIDE + cols.long())
    rows, cols = key // _POSITION_STRIDE, key % _POSITION_STRIDE
    handles = []
    shapes: dict[int, torch.Size] = {}

    def gather(module: nn.Module, args: tuple) -> tuple | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 3:
            return None  # unexpected call: run the module as it is
        shapes[id(module)] = x.shape
        r, c = rows.to(x.device), cols.to(x.device)
        return (x[r, c].unsqueeze(1), *args[1:])

    def scatter(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        shape = shapes.pop(id(module), None)
        if shape is None or not isinstance(output, torch.Tensor):
            return None
        full = output.new_zeros(shape[0], shape[1], output.shape[-1])
        r, c = rows.to(output.device), cols.to(output.device)
        return full.index_put((r, c), output[:, 0])

    try:
        for part in parts:
            handles.append(part.register_forward_pre_hook(gather))
            handles.append(part.register_forward_hook(scatter))
        yield True
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["position_wise_parts", "scored_positions_only"]

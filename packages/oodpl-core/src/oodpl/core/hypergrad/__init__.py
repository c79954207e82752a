"""Hypergradients of ``L_out(θ^K(φ))`` through an inner optimisation (METHODS §3).

Parameters are plain dicts of named tensors (``Params``), losses are pure callables
``inner_loss(theta, phi, batch)`` and ``outer_loss(theta, batch)``; nothing assumes a model
class, so the same code differentiates LoRA factors of a transformer or a 3-parameter toy.
"""

from oodpl.core.hypergrad._autodiff import SeparableInnerLoss
from oodpl.core.hypergrad._common import HypergradResult
from oodpl.core.hypergrad._params import Params
from oodpl.core.hypergrad.dispatch import METHODS, hypergradient
from oodpl.core.hypergrad.first_order import first_order_hypergradient
from oodpl.core.hypergrad.implicit import implicit_hypergradient
from oodpl.core.hypergrad.truncated import truncated_hypergradient
from oodpl.core.hypergrad.unrolled import unrolled_hypergradient

__all__ = [
    "METHODS",
    "HypergradResult",
    "Params",
    "SeparableInnerLoss",
    "first_order_hypergradient",
    "hypergradient",
    "implicit_hypergradient",
    "truncated_hypergradient",
    "unrolled_hypergradient",
]

"""Optimizers by name: the ZO-Bench family (zeroth order), Forward-Grad, and first-order baselines."""

from __future__ import annotations

from torch import nn

from l2lzo.errors import L2LZOError
from l2lzo.optim.first_order import FOSGD, FOAdam
from l2lzo.optim.forward_grad import ForwardGrad
from l2lzo.optim.zeroth_order import (
    ZOSGD,
    ZeroOrderOptimizer,
    ZOAdam,
    ZOSGDConservative,
    ZOSGDMomentum,
    ZOSGDSign,
)

ZERO_ORDER = {
    "zo-sgd": ZOSGD,
    "zo-sgd-sign": ZOSGDSign,
    "zo-sgd-mmt": ZOSGDMomentum,
    "zo-sgd-cons": ZOSGDConservative,
    "zo-adam": ZOAdam,
    "forward-grad": ForwardGrad,
}
FIRST_ORDER = {"fo-sgd": FOSGD, "fo-adam": FOAdam}
OPTIMIZERS = {**ZERO_ORDER, **FIRST_ORDER}

__all__ = [
    "FIRST_ORDER",
    "FOSGD",
    "OPTIMIZERS",
    "ZERO_ORDER",
    "ZOSGD",
    "FOAdam",
    "ForwardGrad",
    "ZOAdam",
    "ZOSGDConservative",
    "ZOSGDMomentum",
    "ZOSGDSign",
    "ZeroOrderOptimizer",
    "build_optimizer",
]


def optimizer_class(name: str) -> type:
    """The class behind an optimizer name (case-insensitive); ``L2LZOError`` listing the choices if unknown."""
    try:
        return OPTIMIZERS[name.lower()]
    except KeyError:
        raise L2LZOError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}") from None


def build_optimizer(name: str, model: nn.Module, lr: float, eps: float = 1e-3, n_queries: int = 1,
                    seed: int = 0):
    """The optimizer called ``name`` (see ``OPTIMIZERS``) over the model's trainable parameters."""
    cls = optimizer_class(name)
    if name.lower() in ZERO_ORDER:
        return cls(model, lr=lr, eps=eps, n_queries=n_queries, seed=seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise L2LZOError("no trainable parameters: the fine-tuning scheme left nothing to optimize")
    return cls(params, lr=lr)

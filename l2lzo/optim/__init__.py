"""Optimizers by name: the ZO-Bench family (zeroth order), Forward-Grad, and first-order baselines."""

from __future__ import annotations

import torch
from torch import nn

from l2lzo.blocks import Block, discover_blocks
from l2lzo.errors import L2LZOError, check_choice
from l2lzo.noise import check_noise
from l2lzo.optim.first_order import FOSGD, FOAdam
from l2lzo.optim.forward_grad import ForwardGrad
from l2lzo.optim.hybrid import HybridZOFO
from l2lzo.optim.hyperparameters import check_lr
from l2lzo.optim.zeroth_order import (
    ZOSGD,
    ZeroOrderOptimizer,
    ZOAdam,
    ZOSGDConservative,
    ZOSGDMomentum,
    ZOSGDSign,
)
from l2lzo.sparsity import SparsityConfig

ZERO_ORDER = {
    "zo-sgd": ZOSGD,
    "zo-sgd-sign": ZOSGDSign,
    "zo-sgd-mmt": ZOSGDMomentum,
    "zo-sgd-cons": ZOSGDConservative,
    "zo-adam": ZOAdam,
    "forward-grad": ForwardGrad,
}
FIRST_ORDER = {"fo-sgd": FOSGD, "fo-adam": FOAdam}
HYBRID_FO = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}  # the FO half of hybrid ZO/FO
OPTIMIZERS = {**ZERO_ORDER, **FIRST_ORDER}

__all__ = [
    "FIRST_ORDER",
    "FOSGD",
    "HYBRID_FO",
    "OPTIMIZERS",
    "ZERO_ORDER",
    "ZOSGD",
    "FOAdam",
    "ForwardGrad",
    "HybridZOFO",
    "ZOAdam",
    "ZOSGDConservative",
    "ZOSGDMomentum",
    "ZOSGDSign",
    "ZeroOrderOptimizer",
    "build_optimizer",
]


def optimizer_class(name: str) -> type:
    """The class behind an optimizer name (case-insensitive); ``L2LZOError`` listing the choices if unknown."""
    check_choice("optimizer", name.lower(), OPTIMIZERS)
    return OPTIMIZERS[name.lower()]


def build_optimizer(name: str, model: nn.Module, lr: float, eps: float = 1e-3, n_queries: int = 1,
                    seed: int = 0, *, group_level: str | None = None, sparsity: SparsityConfig | None = None,
                    fo_blocks: list[Block] | None = None, fo_optimizer: str = "adam", fo_lr: float = 1e-4,
                    noise: str = "pool"):
    """The optimizer called ``name`` (see ``OPTIMIZERS``) over the model's trainable parameters.

    ZO options: ``group_level`` (block-wise), ``sparsity`` (masked z), ``noise`` (``l2lzo.noise``) and
    ``fo_blocks``: with it, a ``HybridZOFO`` trains those blocks with ``fo_optimizer`` at ``fo_lr`` and the
    rest with ``name``.
    """
    cls = optimizer_class(name)
    check_noise(noise)
    if name.lower() in ZERO_ORDER:
        if not fo_blocks:
            return cls(model, lr=lr, eps=eps, n_queries=n_queries, seed=seed, group_level=group_level,
                       sparsity=sparsity, noise=noise)
        fo_ids = {id(b.param) for b in fo_blocks}
        zo_blocks = [b for b in discover_blocks(model) if id(b.param) not in fo_ids]
        zo = cls(model, lr=lr, eps=eps, n_queries=n_queries, seed=seed, group_level=group_level,
                 sparsity=sparsity, noise=noise, blocks=zo_blocks)
        return HybridZOFO(zo, HYBRID_FO[fo_optimizer]([b.param for b in fo_blocks], lr=fo_lr))
    if group_level or sparsity or fo_blocks:
        raise L2LZOError(f"block-wise, sparse and hybrid options apply to ZO optimizers, not {name!r}")
    check_lr(lr)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise L2LZOError("no trainable parameters: the fine-tuning scheme left nothing to optimize")
    return cls(params, lr=lr)

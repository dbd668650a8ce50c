"""Forward-Grad: an unbiased gradient estimate from one forward-mode JVP, no eps."""

from __future__ import annotations

import math

import torch.autograd.forward_ad as fwAD
from torch.nn.attention import SDPBackend, sdpa_kernel

from l2lzo.blocks import Block
from l2lzo.optim.zeroth_order import Closure, ZeroOrderOptimizer
from l2lzo.perturbation import Direction


class ForwardGrad(ZeroOrderOptimizer):
    """theta -= lr * (dL/dv) * v with v = sigma * z, where dL/dv comes from forward-mode AD.

    The directional derivative is exact (no finite difference), so ``eps`` only scales the (L+, L-) pair it
    reports to a sigma policy (``last_losses``). The tangent of each block is materialized while its module
    runs (forward-mode AD needs it as a tensor), so this costs more memory than SPSA; the update regenerates
    z from the seed like ZO-SGD.

    The closure runs with scaled-dot-product attention pinned to its math backend: the fused CPU kernels
    (flash, memory-efficient) have no forward-mode derivative, and transformers uses SDPA by default.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != [None]:
            raise ValueError("block-wise estimates are for SPSA optimizers; forward-grad is exact per direction")

    def estimate(self, closure: Closure) -> tuple[list[Direction], float]:
        seeds = self.query_seeds()
        directions, losses = [], []
        for seed in seeds:
            with fwAD.dual_level():

                def dual(block: Block, module, attr, seed=seed):
                    tangent = self.engine.noise(seed, block) * float(self.engine.sigma[block.index])
                    return fwAD.make_dual(block.param.detach(), tangent)

                with self.engine.swapped(dual), sdpa_kernel(SDPBackend.MATH):
                    loss = closure()
                primal, tangent = fwAD.unpack_dual(loss)
            derivative = float(tangent) if tangent is not None else 0.0
            if not (math.isfinite(float(primal)) and math.isfinite(derivative)):
                raise FloatingPointError(f"non-finite forward gradient at step {self.steps}")
            directions.append(Direction(seed, derivative / len(seeds)))
            losses.append(float(primal))
            # What an SPSA pair at this eps would have seen: keeps a sigma policy's loss features comparable.
            eps = self.hparams["eps"]
            self.last_losses = (float(primal) + eps * derivative, float(primal) - eps * derivative)
        return directions, sum(losses) / len(losses)

    def apply(self, directions: list[Direction], closure: Closure | None) -> None:
        lr = self.hparams["lr"]
        self.engine.add_([d.scaled(-lr) for d in directions])

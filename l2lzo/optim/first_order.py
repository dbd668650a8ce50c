"""First-order baselines (backprop) behind the same ``step(closure)`` interface as the ZO family.

The closure only returns the loss; these optimizers run it with autograd on and call backward,
so the fine-tune loop treats every optimizer alike.
"""

from __future__ import annotations

import torch

from l2lzo.optim.zeroth_order import Closure


class _BackpropStep:
    """Mixin for a ``torch.optim`` class: step(closure) = zero_grad, loss.backward(), inner step."""

    def step(self, closure: Closure) -> float:  # type: ignore[override]
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
            loss.backward()
        super().step()
        return float(loss.detach())


class FOSGD(_BackpropStep, torch.optim.SGD):
    """FO-SGD: plain stochastic gradient descent with backprop."""


class FOAdam(_BackpropStep, torch.optim.Adam):
    """FO-Adam: Adam with backprop."""

"""Hybrid ZO/FO (Hi-ZFO): backprop on the few most important blocks, a ZO optimizer on the rest.

Only the FO blocks require gradients during the FO pass, so autograd keeps activations from the loss
down to the lowest FO layer and no deeper, and only FO blocks get ``.grad`` and optimizer state. The ZO
part is any ``ZeroOrderOptimizer`` built over the remaining blocks (and, later, the learned policy).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from l2lzo.optim.zeroth_order import Closure, ZeroOrderOptimizer


class HybridZOFO:
    """``step(closure)``: FO gradient of the FO blocks at theta, ZO step on the rest, then the FO step.

    Both parts see the same theta (the FO update is applied last). A step costs one forward and
    backward for FO plus the ZO optimizer's forwards.
    """

    def __init__(self, zo: ZeroOrderOptimizer, fo: torch.optim.Optimizer):
        self.zo = zo
        self.fo = fo
        self.fo_params = [p for group in fo.param_groups for p in group["params"]]
        self.zo_params = [b.param for b in zo.blocks]
        overlap = {id(p) for p in self.fo_params} & {id(p) for p in self.zo_params}
        if overlap:
            raise ValueError(f"{len(overlap)} tensors are in both the FO and the ZO set")

    def set_sigma_hook(self, hook) -> None:
        """The ZO part's sigma hook (it sees the ZO blocks only; see ``ZeroOrderOptimizer.set_sigma_hook``)."""
        self.zo.set_sigma_hook(hook)

    def state_dict(self) -> dict:
        """Both halves' state dicts (see ``ZeroOrderOptimizer.state_dict``)."""
        return {"zo": self.zo.state_dict(), "fo": self.fo.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore ``state_dict()``'s output."""
        self.zo.load_state_dict(state_dict["zo"])
        self.fo.load_state_dict(state_dict["fo"])

    def step(self, closure: Closure) -> float:
        self.fo.zero_grad(set_to_none=True)
        with torch.enable_grad(), _frozen(self.zo_params):
            closure().backward()
        loss = self.zo.step(closure)
        self.fo.step()
        return loss


@contextmanager
def _frozen(params: list[torch.nn.Parameter]):
    """ZO tensors out of autograd for the FO pass (no graph through them, no .grad)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)

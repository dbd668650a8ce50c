"""The meta-objective: the held-out loss after K ZO-SGD steps taken with the policy's sigma.

Why this one. An episode runs K real ZO-SGD steps, exactly as a downstream job would (same engine, same
noise, sigma from the policy at every step), then measures the loss on a *different* batch of the same task:
the policy is scored on what its updates do to unseen examples, not on the batch it stepped on.

Its gradient. With the SPSA scalars g_t held fixed (as ZO Fine-tuner does), K steps of ZO-SGD give
theta_K,b = theta_0,b - lr * sum_t sum_j c_tj * sigma_tb * z_tjb, which is linear in every sigma_tb, so

    dL_ho(theta_K) / dsigma_tb = -lr * sum_j c_tj * <grad_b L_ho(theta_K), z_tjb>.

One backward at theta_K gives grad L_ho; the inner products with z_tj are regenerated from the seeds (no
direction is stored); and the surrogate sum_tb sigma_tb * (that number) carries the gradient into the policy
through every step's sigma. Normalisation is inside the policy's forward, so it is differentiated too (the
objective cannot simply grow sigma). ``tests/test_meta_train.py`` checks this gradient against finite
differences of the replayed trajectory.

Why not the expected look-ahead (DESIGN option b): it needs a per-block curvature estimate and, on its own,
puts all mass on argmax G_b / tr(H_bb); here the variance and curvature of real steps are in the loss itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from l2lzo.optim import ZeroOrderOptimizer
from l2lzo.perturbation import Direction
from l2lzo.policy_net import LearnedSigma


@dataclass
class LookAhead:
    """One episode's outcome: the meta-loss and the surrogate whose gradient is the meta-gradient."""

    meta_loss: float  # L_ho(theta_K)
    surrogate: torch.Tensor  # d surrogate / d policy weights = d L_ho(theta_K) / d policy weights (g fixed)
    directions: list[list[Direction]]  # each step's estimate (seeds, g / n_queries), for replays and tests


def look_ahead(optimizer: ZeroOrderOptimizer, sigma: LearnedSigma, closures: Sequence[Callable[[], torch.Tensor]],
               heldout: Callable[[], torch.Tensor]) -> LookAhead:
    """Run one ZO-SGD step per closure with ``sigma`` (``keep_graph=True``) as the hook, then score theta_K."""
    if not sigma.keep_graph:
        raise ValueError("look_ahead needs a LearnedSigma with keep_graph=True")
    if optimizer.sigma_hook is not sigma:
        optimizer.set_sigma_hook(sigma)
    sigma.graphs.clear()
    directions = []
    for closure in closures:
        optimizer.step(closure)
        directions.append(list(optimizer.last_directions))
    params = [b.param for b in optimizer.blocks]
    with torch.enable_grad():
        loss = heldout()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    lr = optimizer.hparams["lr"]
    surrogate = torch.zeros((), dtype=torch.float64)
    for step_directions, step_sigma in zip(directions, sigma.graphs, strict=True):
        slope = sum(d.coeff * optimizer.engine.inner_products(d.seed, grads) for d in step_directions)
        surrogate = surrogate + (-lr * slope * step_sigma).sum()
    return LookAhead(float(loss.detach()), surrogate, directions)

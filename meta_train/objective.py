"""The meta-objective: the held-out loss after K ZO-SGD steps taken with the policy's sigma.

Why this one. An episode runs K real ZO-SGD steps, exactly as a downstream job would (same engine, same
noise, sigma from the policy at every step), then measures the loss on a *different* batch of the same task:
the policy is scored on what its updates do to unseen examples, not on the batch it stepped on.

Its gradient. Step t moves theta by -lr * sum_j c_tj * sigma_t (.) z_tj, where c_tj = g_tj / n_queries and the
SPSA scalar g_tj = (L+ - L-) / (2 eps) itself grows with sigma: to first order g_tj = sum_b sigma_tb *
<z_tjb, grad_b L_t(theta_t)>, the train batch's gradient. So

    dL_ho(theta_K) / dsigma_tb = -lr * sum_j ( c_tj * P_tjb  +  <z_tjb, grad_b L_t> / n_queries * Q_tj ),
    P_tjb = <grad_b L_ho(theta_K), z_tjb>,   Q_tj = sum_b' sigma_tb' * P_tjb'.

The first term is where each block's step lands; the second is how much sigma_b enlarges *every* block's step
through g: the variance cost of a large sigma on a high-gradient block. Dropping it (holding g fixed, as ZO
Fine-tuner does) was measured here to be harmful: a minilm-l6 policy trained that way moved sigma to
[0.62, 2.23] within 25 meta-steps and made the validation runs' loss 11.7% worse than sigma = 1. What remains
ignored is second order in the trajectory: how sigma_t changes the theta at which later steps estimate.

Cost: one backward at theta_K, one backward per inner step (the train gradient at theta_t), and the inner
products regenerated from the seeds (no direction is stored). The surrogate sum_tb sigma_tb * (that number)
carries the gradient into the policy through every step's sigma; normalisation is inside the policy's
forward, so it is differentiated too. ``tests/test_meta_train.py`` checks this gradient against finite
differences of a replayed trajectory.

Why not the expected look-ahead (DESIGN option b): it needs a per-block curvature estimate and, on its own,
puts all mass on argmax G_b / tr(H_bb); here the variance and curvature of real steps are in the loss itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from l2lzo.optim import ZeroOrderOptimizer
from l2lzo.perturbation import Direction
from l2lzo.policy.network import LearnedSigma


@dataclass
class InnerStep:
    """What one inner step left behind: its estimate and the train gradient's projections on its directions."""

    directions: list[Direction]  # seeds and c = g / n_queries
    sigma: torch.Tensor  # the sigma the step used, as the engine held it (float64): with the directions, a replay
    scalar_slopes: list[torch.Tensor]  # per direction: <z_b, grad_b L_t(theta_t)> for every block (dg / dsigma_b)


@dataclass
class LookAhead:
    """One episode's outcome: the meta-loss and the surrogate whose gradient is the meta-gradient."""

    meta_loss: float  # L_ho(theta_K)
    surrogate: torch.Tensor  # d surrogate / d policy weights = d L_ho(theta_K) / d policy weights (first order)
    steps: list[InnerStep]  # for replays and tests


def _gradient(loss: Callable[[], torch.Tensor], params: list[torch.nn.Parameter]) -> tuple[torch.Tensor, ...]:
    with torch.enable_grad():
        value = loss()
        return value.detach(), torch.autograd.grad(value, params, allow_unused=True)


def look_ahead(optimizer: ZeroOrderOptimizer, sigma: LearnedSigma, closures: Sequence[Callable[[], torch.Tensor]],
               heldout: Callable[[], torch.Tensor]) -> LookAhead:
    """Run one ZO-SGD step per closure with ``sigma`` (``keep_graph=True``) as the hook, then score theta_K."""
    if not sigma.keep_graph:
        raise ValueError("look_ahead needs a LearnedSigma with keep_graph=True")
    if optimizer.sigma_hook is not sigma:
        optimizer.set_sigma_hook(sigma)
    sigma.graphs.clear()
    engine, params = optimizer.engine, [b.param for b in optimizer.blocks]
    steps = []
    for closure in closures:
        _, train_grads = _gradient(closure, params)  # at theta_t, before the step moves it
        optimizer.step(closure)
        directions = list(optimizer.last_directions)
        steps.append(InnerStep(directions, engine.sigma.clone(),
                               [engine.inner_products(d.seed, train_grads) for d in directions]))
    loss, grads = _gradient(heldout, params)
    lr, queries = optimizer.hparams["lr"], optimizer.hparams["n_queries"]
    surrogate = torch.zeros((), dtype=torch.float64)
    for step, step_sigma in zip(steps, sigma.graphs, strict=True):
        slope = torch.zeros(len(params), dtype=torch.float64)
        for direction, scalar_slope in zip(step.directions, step.scalar_slopes, strict=True):
            landing = engine.inner_products(direction.seed, grads)  # P
            spread = float((step_sigma.detach() * landing).sum())  # Q
            slope += direction.coeff * landing + scalar_slope / queries * spread
        surrogate = surrogate + (-lr * slope * step_sigma).sum()
    return LookAhead(float(loss), surrogate, steps)

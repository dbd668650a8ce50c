"""Each ZO update rule, step by step, against a reference computed by hand from the same z and the same losses.

The reference regenerates z through the engine's public API (``engine.noise``) for the step's seeds
(``query_seeds``) and forms the one-query SPSA estimate g * sigma_b * z_b from the two losses the closure
returned, g = (L+ - L-) / (2 eps). Several steps, so that momentum and Adam's bias correction matter, on a
tiny model with two blocks of different sigma.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from l2lzo.optim import ForwardGrad, ZOAdam, ZOSGDMomentum, ZOSGDSign
from l2lzo.perturbation import Direction

EPS, LR, STEPS = 1e-3, 0.05, 5
SIGMA = (0.5, 2.0)


def problem(seed: int = 0):
    """A two-block model (weight 2x3, bias 2) and a closure that records every loss it returns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=g)
    y = torch.randn(16, 2, generator=g)
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    seen: list[float] = []

    def closure():
        loss = ((model(x) - y) ** 2).mean()
        seen.append(float(loss.detach()))
        return loss

    return model, closure, seen


def run_against_reference(opt, closure, seen, rule, steps: int = STEPS):
    """Step ``opt``; before each step, advance ``rule(t, estimates, thetas)`` to the expected new thetas."""
    opt.set_sigma(torch.tensor(SIGMA, dtype=torch.float64))
    thetas = [b.param.detach().clone() for b in opt.blocks]
    for t in range(1, steps + 1):
        (seed,) = opt.query_seeds()
        z = [opt.engine.noise(seed, b) for b in opt.blocks]
        seen.clear()
        opt.step(closure)
        assert len(seen) == 2  # L+ then L-: one query, one pair
        g = (seen[0] - seen[1]) / (2 * EPS)
        assert g != 0
        estimates = [g * s * zb for s, zb in zip(SIGMA, z, strict=True)]
        thetas = rule(t, estimates, thetas)
        for block, want in zip(opt.blocks, thetas, strict=True):
            torch.testing.assert_close(block.param.detach(), want, rtol=1e-5, atol=1e-6,
                                       msg=lambda m, t=t, n=block.name: f"step {t}, {n}: {m}")
        thetas = [b.param.detach().clone() for b in opt.blocks]  # each step checked from where it really starts


@pytest.mark.parametrize("noise", ["pool", "gaussian"])
def test_sign_step_is_theta_minus_lr_sign_of_the_estimate(noise):
    model, closure, seen = problem()
    opt = ZOSGDSign(model, lr=LR, eps=EPS, seed=3, noise=noise)

    def rule(t, estimates, thetas):
        return [theta - LR * est.sign() for theta, est in zip(thetas, estimates, strict=True)]

    run_against_reference(opt, closure, seen, rule)


@pytest.mark.parametrize("noise", ["pool", "gaussian"])
def test_momentum_step_is_heavy_ball_on_the_estimate(noise):
    beta = 0.8
    model, closure, seen = problem()
    opt = ZOSGDMomentum(model, momentum=beta, lr=LR, eps=EPS, seed=4, noise=noise)
    buffers: list[torch.Tensor] = []

    def rule(t, estimates, thetas):
        if not buffers:
            buffers.extend(torch.zeros_like(e) for e in estimates)
        for m, est in zip(buffers, estimates, strict=True):
            m.mul_(beta).add_(est)
        return [theta - LR * m for theta, m in zip(thetas, buffers, strict=True)]

    run_against_reference(opt, closure, seen, rule)
    assert all(torch.count_nonzero(m) > 0 for m in buffers)


@pytest.mark.parametrize("noise", ["pool", "gaussian"])
def test_adam_step_has_both_moments_and_the_bias_correction(noise):
    (b1, b2), adam_eps = (0.7, 0.9), 1e-6
    model, closure, seen = problem()
    opt = ZOAdam(model, betas=(b1, b2), adam_eps=adam_eps, lr=LR, eps=EPS, seed=5, noise=noise)
    moments: list[list[torch.Tensor]] = []

    def rule(t, estimates, thetas):
        if not moments:
            moments.extend([torch.zeros_like(e), torch.zeros_like(e)] for e in estimates)
        new = []
        for (m, v), est, theta in zip(moments, estimates, thetas, strict=True):
            m.mul_(b1).add_((1 - b1) * est)
            v.mul_(b2).add_((1 - b2) * est * est)
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            new.append(theta - LR * m_hat / (v_hat.sqrt() + adam_eps))
        return new

    run_against_reference(opt, closure, seen, rule)


def test_adam_first_step_moves_every_coordinate_by_lr():
    """Bias-corrected, Adam's first step is lr * sign(estimate) (up to adam_eps): a missing correction shows."""
    model, closure, _ = problem()
    opt = ZOAdam(model, betas=(0.9, 0.999), adam_eps=1e-12, lr=LR, eps=EPS, seed=6)
    before = [b.param.detach().clone() for b in opt.blocks]
    opt.step(closure)
    for block, theta in zip(opt.blocks, before, strict=True):
        moved = (block.param.detach() - theta).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, LR), rtol=1e-4, atol=0)


# -- Forward-Grad's synthetic (L+, L-): what a sigma policy reads -------------------------------------------------

def test_forward_grad_reports_the_pair_an_spsa_probe_would_see():
    """(L+, L-) = L +- eps * dL/d(sigma z): centred on the loss, and what an SPSA pair at eps measures."""
    model, closure, _ = problem()
    opt = ForwardGrad(model, lr=LR, eps=EPS, seed=7)
    opt.set_sigma(torch.tensor(SIGMA, dtype=torch.float64))
    for _ in range(3):
        (seed,) = opt.query_seeds()
        with torch.enable_grad():
            loss = closure()
            grads = torch.autograd.grad(loss, [b.param for b in opt.blocks])
        primal = float(loss.detach())
        derivative = sum(float((gr * s * opt.engine.noise(seed, b)).sum())
                         for gr, s, b in zip(grads, SIGMA, opt.blocks, strict=True))
        with torch.no_grad():
            with opt.engine.perturbed([Direction(seed, EPS)]):
                real_plus = float(closure())
            with opt.engine.perturbed([Direction(seed, -EPS)]):
                real_minus = float(closure())
        opt.step(closure)
        plus, minus = opt.last_losses
        assert plus == pytest.approx(primal + EPS * derivative, rel=1e-5, abs=1e-9)
        assert minus == pytest.approx(primal - EPS * derivative, rel=1e-5, abs=1e-9)
        assert plus - minus == pytest.approx(real_plus - real_minus, rel=1e-2)

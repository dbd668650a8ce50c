"""The optimizer family: exact update rules, learning on a small problem, closure contract, bad input."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig, grouped_loss
from l2lzo.models import CAUSAL, ENCODER, tiny_model
from l2lzo.optim import OPTIMIZERS, ZOSGD, ForwardGrad, ZOSGDConservative, build_optimizer
from l2lzo.perturbation import Direction
from l2lzo.policy.artifact import PolicyArtifact
from l2lzo.schemes import apply_scheme
from l2lzo.scoring import Scorer


def regression_problem(seed: int = 0):
    """A linear regression: the loss has a known minimum of 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    true_w = torch.randn(1, 6, generator=g)
    y = x @ true_w.T
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 1, bias=False))

    def closure():
        return ((model(x) - y) ** 2).mean()  # FO optimizers run it with autograd on, ZO under no_grad

    return model, closure


LEARNING_RATES = {
    "zo-sgd": 0.02, "zo-sgd-sign": 0.01, "zo-sgd-mmt": 0.005, "zo-sgd-cons": 0.02, "zo-adam": 0.02,
    "forward-grad": 0.02, "fo-sgd": 0.1, "fo-adam": 0.05,
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_reduces_the_loss(name):
    model, closure = regression_problem()
    opt = build_optimizer(name, model, lr=LEARNING_RATES[name], eps=1e-3, seed=1)
    start = float(closure().detach())
    for _ in range(300):
        loss = opt.step(closure)
        assert isinstance(loss, float)
    assert float(closure().detach()) < 0.2 * start, name


def test_zo_sgd_update_is_exactly_theta_minus_lr_g_z():
    model, closure = regression_problem()
    opt = ZOSGD(model, lr=0.01, eps=1e-3, seed=5)
    seed = opt.query_seeds()[0]
    block = opt.blocks[0]
    theta = block.param.detach().clone()
    z = opt.engine.noise(seed, block)
    with torch.no_grad():
        with opt.engine.perturbed([Direction(seed, 1e-3)]):
            plus = float(closure())
        with opt.engine.perturbed([Direction(seed, -1e-3)]):
            minus = float(closure())
    opt.step(closure)
    g = (plus - minus) / 2e-3
    torch.testing.assert_close(block.param.detach(), theta - 0.01 * g * z)
    assert opt.last_losses == (plus, minus)


def test_n_queries_averages_the_directions():
    model, closure = regression_problem()
    opt = ZOSGD(model, lr=0.01, eps=1e-3, n_queries=3, seed=2)
    theta = opt.blocks[0].param.detach().clone()
    directions, _ = opt.estimate(closure)
    assert len(directions) == 3 and len({d.seed for d in directions}) == 3
    expected = theta.clone()
    for d in directions:
        expected -= 0.01 * d.coeff * opt.engine.noise(d.seed, opt.blocks[0])
    opt.apply(directions, closure)
    torch.testing.assert_close(opt.blocks[0].param.detach(), expected)


def test_forward_grad_matches_autograd_directional_derivative():
    model, closure = regression_problem()
    opt = ForwardGrad(model, lr=0.01, seed=3)
    (direction,), _ = opt.estimate(closure)
    with torch.enable_grad():
        grad = torch.autograd.grad(closure(), model[0].weight)[0]
    z = opt.engine.noise(direction.seed, opt.blocks[0])
    torch.testing.assert_close(torch.tensor(direction.coeff), (grad * z).sum(), rtol=1e-4, atol=1e-6)


def test_conservative_step_never_increases_a_deterministic_loss():
    model, closure = regression_problem()
    opt = ZOSGDConservative(model, lr=0.5, eps=1e-3)  # lr large enough that plain steps overshoot
    for _ in range(30):
        before = float(closure().detach())
        opt.step(closure)
        assert float(closure().detach()) <= before + 1e-6


def test_sigma_zero_freezes_a_block():
    loaded = tiny_model(CAUSAL)
    ids = torch.tensor([[1, 2, 3, 4]])
    opt = ZOSGD(loaded.model, lr=1e-2)
    sigma = torch.ones(len(opt.blocks), dtype=torch.float64)
    sigma[3] = 0.0
    opt.set_sigma(sigma)
    frozen = opt.blocks[3].param.detach().clone()
    opt.step(lambda: loaded.model(input_ids=ids).logits.square().mean())
    assert torch.equal(opt.blocks[3].param.detach(), frozen)


def test_zo_touches_only_the_trainable_tensors_of_a_scheme():
    loaded = apply_scheme(tiny_model(CAUSAL), "lora")
    frozen = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if not p.requires_grad}
    opt = build_optimizer("zo-sgd", loaded.model, lr=1e-2)
    assert {b.role for b in opt.blocks} == {"lora_A", "lora_B"}
    ids = torch.tensor([[1, 2, 3, 4]])
    for _ in range(3):
        opt.step(lambda: loaded.model(input_ids=ids).logits.square().mean())
    for n, p in loaded.model.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), n


def test_zo_optimizer_state_for_momentum_and_adam():
    for name, keys in (("zo-sgd-mmt", {"momentum"}), ("zo-adam", {"exp_avg", "exp_avg_sq"})):
        model, closure = regression_problem()
        opt = build_optimizer(name, model, lr=1e-3)
        opt.step(closure)
        assert set(opt.state[model[0].weight]) == keys


def test_non_finite_loss_raises():
    model, _ = regression_problem()
    opt = ZOSGD(model, lr=1e-3)
    with pytest.raises(FloatingPointError):
        opt.step(lambda: torch.tensor(float("nan")))


@pytest.mark.parametrize("kwargs", [{"lr": 0.0}, {"lr": -1.0}, {"lr": float("inf")}, {"lr": 1e-3, "eps": 0.0},
                                    {"lr": 1e-3, "n_queries": 0}])
def test_bad_hyperparameters_raise(kwargs):
    model, _ = regression_problem()
    with pytest.raises(ValueError):
        ZOSGD(model, **kwargs)


def test_unknown_optimizer_and_empty_parameter_set():
    model, _ = regression_problem()
    with pytest.raises(L2LZOError, match="unknown optimizer 'adamw'"):
        build_optimizer("adamw", model, lr=1e-3)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("zo-sgd", model, lr=1e-3)
    with pytest.raises(L2LZOError, match="no trainable parameters"):
        build_optimizer("fo-sgd", model, lr=1e-3)


@pytest.mark.parametrize("family", [CAUSAL, ENCODER])
def test_forward_grad_matches_autograd_on_a_transformer(family, label_word_examples):
    """SDPA attention has no forward-mode AD on CPU: Forward-Grad must still give grad . (sigma z)."""
    loaded = tiny_model(family)
    closure = grouped_loss(Scorer(loaded), label_word_examples)
    opt = ForwardGrad(loaded.model, lr=1e-3, seed=4)
    sigma = 0.5 + torch.rand(len(opt.blocks), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opt.set_sigma(sigma)
    (direction,), _ = opt.estimate(closure)
    with torch.enable_grad():
        grads = torch.autograd.grad(closure(), [b.param for b in opt.blocks])
    want = sum(float(sigma[b.index]) * (g * opt.engine.noise(direction.seed, b)).sum()
               for g, b in zip(grads, opt.blocks, strict=True))
    torch.testing.assert_close(torch.tensor(direction.coeff), want.detach(), rtol=1e-3, atol=1e-6)


def test_one_lr_and_eps_rule_everywhere():
    """The fine-tune config, every optimizer builder and a policy's recommendations accept the same ranges."""
    model, _ = regression_problem()

    def policy_recommending(lr, eps):
        metadata = {"recommended_lr": str(lr), "recommended_eps": str(eps), "recommended_steps": "10"}
        return PolicyArtifact(Path("p"), "m", 1, "0" * 64, metadata).recommended()

    for lr, eps in ((2.0, 1e-3), (0.0, 1e-3), (float("nan"), 1e-3), (1e-3, 2.0), (1e-3, 0.0)):
        checks = [partial(FinetuneConfig(lr=lr, eps=eps).validate),
                  partial(build_optimizer, "zo-sgd", model, lr=lr, eps=eps),
                  partial(build_optimizer, "forward-grad", model, lr=lr, eps=eps),
                  partial(policy_recommending, lr, eps)]
        if eps == 1e-3:  # first-order optimizers have no eps
            checks.append(partial(build_optimizer, "fo-adam", model, lr=lr))
        messages = set()
        for check in checks:
            with pytest.raises(L2LZOError) as info:
                check()
            messages.add(str(info.value).split(": ", 1)[-1])
        assert len(messages) == 1, messages

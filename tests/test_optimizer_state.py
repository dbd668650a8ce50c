"""ZO optimizer state: saved mid-run and loaded into a fresh optimizer, a run continues bitwise like the unbroken one.

What a step depends on beyond theta: the step count (it picks the seeds), the last (L+, L-) pair (a sigma hook's
features), sigma, the buffers of momentum and Adam (and Adam's bias correction, from the step count), and a
resampled mask. Each case below crosses a save/load with at least one of them in play.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from l2lzo.blocks import discover_blocks
from l2lzo.optim import ZERO_ORDER, HybridZOFO, ZOSGDMomentum, build_optimizer
from l2lzo.sparsity import SparsityConfig

STEPS, BREAK = 6, 3


def problem(init_seed: int = 0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=g)
    y = torch.sin(x.sum(1, keepdim=True))
    torch.manual_seed(init_seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))

    def closure():
        return ((model(x) - y) ** 2).mean()

    return model, closure


def loss_shaped_sigma(info):
    """A hook that reads the previous step's losses: restoring ``last_losses`` matters to it."""
    shift = 0.0 if info.losses is None else math.tanh(100 * (info.losses[0] - info.losses[1]))
    return {b.name: 1.0 + 0.3 * shift * (-1) ** i for i, b in enumerate(info.blocks)}


CASES = {
    **{name: dict(name=name) for name in ZERO_ORDER},
    "zo-adam two queries": dict(name="zo-adam", n_queries=2),
    "zo-sgd weight decay": dict(name="zo-sgd", weight_decay=0.1),
    "zo-sgd block-wise": dict(name="zo-sgd", group_level="tensor"),
    "zo-sgd random mask": dict(name="zo-sgd", sparsity=SparsityConfig(0.5, "random", "layer", resample_every=2)),
    "zo-sgd-mmt magnitude mask": dict(name="zo-sgd-mmt",
                                      sparsity=SparsityConfig(0.5, "magnitude", "global", resample_every=4)),
    "zo-sgd sigma hook": dict(name="zo-sgd", hook=True),
    "hybrid zo-adam + adam": dict(name="zo-adam", hybrid=True),
}
LR = {"zo-sgd-sign": 1e-3, "zo-adam": 1e-3}


def build(case: dict, model: nn.Module):
    case = dict(case)
    name, hook, hybrid = case.pop("name"), case.pop("hook", False), case.pop("hybrid", False)
    weight_decay = case.pop("weight_decay", 0.0)
    fo_blocks = discover_blocks(model)[-2:] if hybrid else None
    opt = build_optimizer(name, model, lr=LR.get(name, 0.05), eps=1e-2, seed=7, fo_blocks=fo_blocks, **case)
    zo = opt.zo if isinstance(opt, HybridZOFO) else opt
    if weight_decay:
        zo.hparams["weight_decay"] = weight_decay
    if hook:
        zo.set_sigma_hook(loss_shaped_sigma)
    else:
        zo.set_sigma([0.5 + i for i in range(len(zo.blocks))])  # a fixed sigma must survive the load too
    return opt


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def loaded(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_restored_optimizer_continues_bitwise_like_the_unbroken_run(case):
    model, closure = problem()
    opt = build(CASES[case], model)
    for _ in range(STEPS):
        opt.step(closure)
    unbroken = [p.detach().clone() for p in model.parameters()]

    model, closure = problem()
    opt = build(CASES[case], model)
    for _ in range(BREAK):
        opt.step(closure)
    weights, state = saved(model.state_dict()), saved(opt.state_dict())
    del model, opt

    model, closure = problem(init_seed=1)  # other initial weights: everything must come from the files
    model.load_state_dict(loaded(weights))
    opt = build(CASES[case], model)
    opt.load_state_dict(loaded(state))
    for _ in range(STEPS - BREAK):
        opt.step(closure)
    resumed = list(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(unbroken, resumed, strict=True)), case


def test_variant_hyperparameters_are_param_group_keys_and_take_effect():
    opt = ZOSGDMomentum(problem()[0], lr=0.05, eps=1e-2, momentum=0.9, seed=3)
    assert opt.state_dict()["param_groups"][0]["momentum"] == 0.9
    adam = build_optimizer("zo-adam", problem()[0], lr=1e-3, seed=3)
    assert adam.hparams["betas"] == (0.9, 0.999) and adam.hparams["adam_eps"] == 1e-8

    def two_steps(momentum: float) -> torch.Tensor:
        model, closure = problem()
        opt = ZOSGDMomentum(model, lr=0.05, eps=1e-2, momentum=0.9, seed=3)
        opt.step(closure)
        opt.param_groups[0]["momentum"] = momentum  # as a scheduler would
        opt.step(closure)
        return model[0].weight.detach().clone()

    assert not torch.equal(two_steps(0.9), two_steps(0.0))


def test_a_second_param_group_and_a_foreign_state_are_refused():
    model, _ = problem()
    opt = build_optimizer("zo-sgd", model, lr=0.01, seed=1)
    with pytest.raises(ValueError, match="one param group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})
    other = build_optimizer("zo-sgd", problem()[0], lr=0.01, seed=2)
    with pytest.raises(ValueError, match="seed 2"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="no 'zo' entry"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


@pytest.mark.parametrize("name", ["zo-sgd", "zo-sgd-mmt", "zo-adam", "forward-grad"])
def test_replaying_logged_steps_reproduces_the_run_without_a_forward(name):
    model, closure = problem()
    opt = build({"name": name, "hook": name != "zo-adam"}, model)  # zo-adam refuses a sigma policy
    log = []
    for _ in range(4):
        opt.step(closure)
        log.append((opt.last_directions, opt.engine.sigma.tolist()))
    fresh, _ = problem()
    replayed = build({"name": name}, fresh)

    def no_forward():
        raise AssertionError("a replay runs no forward")

    fresh.forward = no_forward
    for directions, sigma in log:
        replayed.replay(directions, sigma)
    assert replayed.steps == 4
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))


def test_a_conservative_step_cannot_be_replayed():
    model, closure = problem()
    opt = build_optimizer("zo-sgd-cons", model, lr=0.05, seed=1)
    opt.step(closure)
    with pytest.raises(ValueError, match="cannot replay"):
        build_optimizer("zo-sgd-cons", problem()[0], lr=0.05, seed=1).replay(opt.last_directions, [1.0, 1.0, 1.0, 1.0])

"""The perturbation engine: exactness (theta bitwise unchanged), equivalence to explicit perturbation,
determinism, sigma, and safety when a forward fails."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from l2lzo.blocks import discover_blocks
from l2lzo.models import CAUSAL, ENCODER, tiny_model
from l2lzo.noise import NOISE_KINDS
from l2lzo.perturbation import Direction, PerturbationEngine, chunk_seed

IDS = torch.tensor([[5, 17, 99, 3, 42, 7], [8, 8, 250, 1, 0, 64]])


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bitwise_equal(model, before):
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), f"{name} changed"
        assert p.detach().view(-1).view(torch.uint8).equal(before[name].view(-1).view(torch.uint8))


def forward(loaded, ids=IDS):
    out = loaded.model(input_ids=ids)
    return out.logits if loaded.family == CAUSAL else out.last_hidden_state


@pytest.mark.parametrize("noise", NOISE_KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk_numel", [1 << 20, 1000])  # 1000: multi-chunk blocks and the additive path
def test_parameters_bitwise_unchanged_after_two_perturbed_forwards(noise, dtype, chunk_numel):
    loaded = tiny_model(CAUSAL)
    loaded.model.to(dtype)
    engine = PerturbationEngine(discover_blocks(loaded.model), chunk_numel=chunk_numel, noise=noise)
    before = snapshot(loaded.model)
    with torch.no_grad():
        with engine.perturbed([Direction(123, 1e-3)]):
            plus = forward(loaded)
        with engine.perturbed([Direction(123, -1e-3)]):
            minus = forward(loaded)
    assert not torch.equal(plus, minus)
    assert_bitwise_equal(loaded.model, before)


@pytest.mark.parametrize("noise", NOISE_KINDS)
@pytest.mark.parametrize("family", [CAUSAL, ENCODER])
@pytest.mark.parametrize("chunk_numel", [1 << 20, 1000])
def test_perturbed_forward_equals_explicitly_perturbed_parameters(noise, family, chunk_numel):
    loaded = tiny_model(family)
    blocks = discover_blocks(loaded.model)
    engine = PerturbationEngine(blocks, chunk_numel=chunk_numel, noise=noise)
    directions = [Direction(1, 0.05), Direction(2, -0.02)]
    with torch.no_grad():
        with engine.perturbed(directions):
            got = forward(loaded)
        params = {b.name: b.param + 0.05 * engine.noise(1, b) - 0.02 * engine.noise(2, b) for b in blocks}
        ids = IDS
        out = functional_call(loaded.model, params, (ids,), tie_weights=True)
        want = out.logits if family == CAUSAL else out.last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_every_block_reaches_the_forward():
    """A block whose owner never runs would be silently unperturbed: each must change the output."""
    loaded = tiny_model(CAUSAL)
    blocks = discover_blocks(loaded.model)
    engine = PerturbationEngine(blocks)
    with torch.no_grad():
        base = forward(loaded)
        for block in blocks:
            sigma = torch.zeros(len(blocks), dtype=torch.float64)
            sigma[block.index] = 1.0
            with engine.perturbed([Direction(3, 0.1)], sigma=sigma):
                assert not torch.equal(forward(loaded), base), block.name


@pytest.mark.parametrize("noise", NOISE_KINDS)
def test_noise_is_deterministic_and_thread_count_independent(noise):
    loaded = tiny_model(CAUSAL)
    results = []
    for threads in (1, 2):
        model = tiny_model(CAUSAL).model
        engine = PerturbationEngine(discover_blocks(model), chunk_numel=500, threads=threads, noise=noise)
        engine.add_([Direction(9, 0.5)])
        results.append(snapshot(model))
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name])
    engine = PerturbationEngine(discover_blocks(loaded.model))
    block = engine.blocks[1]
    assert torch.equal(engine.noise(4, block), engine.noise(4, block))
    assert not torch.equal(engine.noise(4, block), engine.noise(5, block))


def test_add_applies_theta_plus_c_sigma_z():
    model = tiny_model(CAUSAL).model
    blocks = discover_blocks(model)
    engine = PerturbationEngine(blocks, chunk_numel=700)
    sigma = torch.linspace(0.5, 2.0, len(blocks), dtype=torch.float64)
    engine.set_sigma(sigma)
    before = snapshot(model)
    engine.add_([Direction(11, -0.3)])
    for b in blocks:
        want = before[b.name] - 0.3 * float(sigma[b.index]) * engine.noise(11, b)
        torch.testing.assert_close(b.param.detach(), want)


def test_gradient_chunks_cover_every_element_once():
    model = tiny_model(CAUSAL).model
    engine = PerturbationEngine(discover_blocks(model), chunk_numel=300)
    seen = {b.index: torch.zeros_like(b.param) for b in engine.blocks}
    for block, rows, grad in engine.gradient_chunks([Direction(2, 1.0)]):
        seen[block.index][rows] += grad
    for b in engine.blocks:
        torch.testing.assert_close(seen[b.index], engine.noise(2, b))


def test_sigma_validation():
    engine = PerturbationEngine(discover_blocks(tiny_model(CAUSAL).model))
    with pytest.raises(ValueError, match="one per block"):
        engine.set_sigma([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        engine.set_sigma([float("nan")] * len(engine.blocks))


def test_parameters_restored_when_forward_raises():
    loaded = tiny_model(CAUSAL)
    engine = PerturbationEngine(discover_blocks(loaded.model))
    before = snapshot(loaded.model)
    params_before = {n: p for n, p in loaded.model.named_parameters()}
    with pytest.raises(IndexError), torch.no_grad(), engine.perturbed([Direction(1, 0.1)]):
        loaded.model(input_ids=torch.tensor([[10_000]]))  # out-of-vocabulary id fails inside the forward
    assert_bitwise_equal(loaded.model, before)
    for name, p in loaded.model.named_parameters():
        assert p is params_before[name] and isinstance(p, torch.nn.Parameter)
    with torch.no_grad():
        torch.testing.assert_close(forward(loaded), forward(tiny_model(CAUSAL)))


def test_chunk_seeds_are_distinct():
    seeds = {chunk_seed(s, b, c) for s in range(5) for b in range(20) for c in range(10)}
    assert len(seeds) == 5 * 20 * 10


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**62), eps=st.floats(1e-6, 1.0), queries=st.integers(1, 3))
def test_property_perturbation_never_changes_theta(seed, eps, queries):
    loaded = tiny_model(CAUSAL, layers=1, hidden=16)
    engine = PerturbationEngine(discover_blocks(loaded.model), chunk_numel=2000)
    before = snapshot(loaded.model)
    directions = [Direction(seed + q, eps * (-1) ** q) for q in range(queries)]
    with torch.no_grad(), engine.perturbed(directions):
        forward(loaded)
    assert_bitwise_equal(loaded.model, before)


@pytest.mark.parametrize("family", [CAUSAL, ENCODER])
def test_large_projections_cost_the_flops_of_the_plain_layer(family):
    """A projection over chunk_numel runs chunk by chunk on perturbed rows: no second x @ z^T matmul."""
    from torch.utils.flop_counter import FlopCounterMode

    loaded = tiny_model(family)
    engine = PerturbationEngine(discover_blocks(loaded.model), chunk_numel=1000)  # 32x32 and larger: chunked
    assert any(b.numel > 1000 and b.role in ("q", "up", "down") for b in engine.blocks)
    with torch.no_grad():
        with FlopCounterMode(display=False) as plain:
            forward(loaded)
        with engine.perturbed([Direction(1, 1e-3), Direction(2, -1e-3)]), FlopCounterMode(display=False) as noisy:
            forward(loaded)
    assert noisy.get_total_flops() == plain.get_total_flops()

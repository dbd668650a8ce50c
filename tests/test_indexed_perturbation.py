"""IndexedPerturbationEngine: z on a fixed coordinate set, in place, theta restored bitwise, same maths as dense z."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from l2lzo.blocks import discover_blocks, rows_view
from l2lzo.finetune import grouped_loss
from l2lzo.indexed_perturbation import IndexedPerturbationEngine
from l2lzo.models import CAUSAL, tiny_model
from l2lzo.perturbation import Direction
from l2lzo.scoring import Scorer


def some_indices(blocks, fraction=0.1, seed=0):
    """Every block gets round(fraction * n) distinct random indices, sorted; at least one block gets none."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, block in enumerate(blocks):
        k = 0 if i == 1 else max(1, round(fraction * block.numel))
        out[block.name] = torch.randperm(block.numel, generator=gen)[:k].sort().values.to(torch.int32)
    return out


def dense(engine, directions, block, sigma=None):
    """sum_j c_j sigma_b z_b(seed_j), from the engine's dense z."""
    sigma = engine.sigma if sigma is None else sigma
    total = torch.zeros_like(block.param.detach())
    for d in directions:
        if d.covers(block):
            total += d.coeff * float(sigma[block.index]) * engine.noise(d.seed, block)
    return total


@pytest.fixture
def setup():
    loaded = tiny_model(CAUSAL)
    blocks = discover_blocks(loaded.model)
    return loaded, blocks, some_indices(blocks)


@pytest.mark.parametrize("noise", ["pool", "gaussian"])
def test_z_is_zero_off_the_indices_and_does_not_depend_on_chunking(setup, noise):
    _, blocks, indices = setup
    whole = IndexedPerturbationEngine(blocks, indices, noise=noise)
    chunked = IndexedPerturbationEngine(blocks, indices, noise=noise, chunk_numel=37)
    assert max(len(chunked.chunks(b)) for b in blocks) > 1
    for block in blocks:
        z = whole.noise(7, block)
        assert torch.equal(z.flatten().nonzero().flatten().to(torch.int32), indices[block.name]), block.name
        assert torch.equal(chunked.noise(7, block), z)
    assert whole.kept == sum(i.numel() for i in indices.values())


def test_a_perturbed_forward_sees_theta_plus_the_dense_term_and_theta_comes_back_bitwise(setup,
                                                                                       label_word_examples):
    loaded, blocks, indices = setup
    engine = IndexedPerturbationEngine(blocks, indices)
    engine.set_sigma(torch.linspace(0.5, 2.0, len(blocks)))
    closure = grouped_loss(Scorer(loaded, max_length=32), label_word_examples)
    before = [b.param.detach().clone() for b in blocks]
    directions = [Direction(3, 0.05), Direction(4, -0.02, frozenset({0, 2}))]
    with torch.no_grad(), engine.perturbed(directions):
        perturbed = float(closure())
        inside = [b.param.detach().clone() for b in blocks]
    assert all(torch.equal(b.param.detach(), t) for b, t in zip(blocks, before, strict=True))
    for block, seen, theta in zip(blocks, inside, before, strict=True):
        torch.testing.assert_close(seen, theta + dense(engine, directions, block), rtol=0, atol=1e-7)
    with torch.no_grad():  # the same forward with theta set by hand
        for block, seen in zip(blocks, inside, strict=True):
            block.param.copy_(seen)
        assert float(closure()) == perturbed
        for block, theta in zip(blocks, before, strict=True):
            block.param.copy_(theta)


def test_theta_comes_back_bitwise_when_the_forward_raises(setup):
    _, blocks, indices = setup
    engine = IndexedPerturbationEngine(blocks, indices)
    before = [b.param.detach().clone() for b in blocks]
    with pytest.raises(RuntimeError, match="mid-forward"), engine.perturbed([Direction(1, 1.0)]):
        assert not all(torch.equal(b.param.detach(), t) for b, t in zip(blocks, before, strict=True))
        raise RuntimeError("mid-forward")
    assert all(torch.equal(b.param.detach(), t) for b, t in zip(blocks, before, strict=True))


def test_update_gradient_chunks_and_inner_products_match_the_dense_z(setup):
    _, blocks, indices = setup
    engine = IndexedPerturbationEngine(blocks, indices, chunk_numel=37)
    engine.set_sigma(torch.linspace(2.0, 0.5, len(blocks)))
    directions = [Direction(11, 0.3), Direction(12, -0.1, frozenset({1, 3}))]
    expected = {b.name: b.param.detach() + dense(engine, directions, b) for b in blocks}
    grads = {b.name: torch.zeros_like(b.param.detach()) for b in blocks}
    for block, rows, chunk in engine.gradient_chunks(directions):
        rows_view(grads[block.name], rows).copy_(chunk)
    for block in blocks:
        torch.testing.assert_close(grads[block.name], dense(engine, directions, block), rtol=0, atol=1e-7)
    tensors = [torch.randn(b.shape) for b in blocks]
    reference = torch.tensor([float((t.double() * engine.noise(5, b).double()).sum())
                              for b, t in zip(blocks, tensors, strict=True)], dtype=torch.float64)
    torch.testing.assert_close(engine.inner_products(5, tensors), reference)
    engine.add_(directions)
    for block in blocks:
        torch.testing.assert_close(block.param.detach(), expected[block.name], rtol=0, atol=1e-7)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.integers(1, 9), min_size=1, max_size=3), cols=st.integers(1, 6),
       chunk_numel=st.integers(1, 40), data=st.data())
def test_any_index_set_and_chunking_updates_exactly_its_coordinates(rows, cols, chunk_numel, data):
    model = nn.Sequential(*[nn.Linear(cols, r, bias=False) for r in rows])
    blocks = discover_blocks(model)
    indices = {b.name: torch.tensor(sorted(data.draw(st.sets(st.integers(0, b.numel - 1)))), dtype=torch.int32)
               for b in blocks}
    engine = IndexedPerturbationEngine(blocks, indices, chunk_numel=chunk_numel)
    before = [b.param.detach().clone() for b in blocks]
    grads = {b.name: torch.zeros_like(b.param.detach()) for b in blocks}
    for block, rows_slice, chunk in engine.gradient_chunks([Direction(2, 1.0)]):
        rows_view(grads[block.name], rows_slice).copy_(chunk)
    engine.add_([Direction(2, 1.0)])
    for block, theta in zip(blocks, before, strict=True):
        assert torch.equal(block.param.detach(), theta + grads[block.name])
        moved = (block.param.detach() != theta).flatten().nonzero().flatten()
        assert set(moved.tolist()) <= set(indices[block.name].tolist())


def test_bad_indices_are_refused(setup):
    _, blocks, indices = setup
    name = blocks[0].name
    for bad, message in [({**indices, name: indices[name].flip(0)}, "must be sorted"),
                         ({**indices, name: torch.tensor([blocks[0].numel])}, r"in \[0, "),
                         ({k: v for k, v in indices.items() if k != name}, "no indices for 1 blocks")]:
        with pytest.raises(ValueError, match=message):
            IndexedPerturbationEngine(blocks, bad)
    with pytest.raises(ValueError, match="takes no other mask"):
        IndexedPerturbationEngine(blocks, indices).set_mask(lambda block, chunk: None)


class CountingNoise:
    """A noise source that counts the numbers it produces (draws and fused adds)."""

    parallel_chunks = False

    def __init__(self):
        from l2lzo.noise import GaussianNoise

        self.inner, self.numbers = GaussianNoise(), 0

    def draw(self, seed, shape, dtype, device, rows=None):
        z = self.inner.draw(seed, shape, dtype, device, rows)
        self.numbers += z.numel()
        return z

    def add(self, out, base, seed, alpha, mask=None):
        self.numbers += out.numel()
        self.inner.add(out, base, seed, alpha, mask)


@pytest.mark.parametrize("width", [8, 64])
def test_a_steps_noise_grows_with_the_kept_count_not_the_model(width):
    model = nn.Sequential(nn.Linear(width, width), nn.Linear(width, 4))
    blocks = discover_blocks(model)
    indices = {b.name: torch.arange(min(3, b.numel), dtype=torch.int32) for b in blocks}  # 3 per block, any width
    noise = CountingNoise()
    engine = IndexedPerturbationEngine(blocks, indices, noise=noise)
    inputs = torch.randn(2, width)
    with torch.no_grad():
        for c in (1e-3, -1e-3):  # L+, L-, then the update: what a ZO-SGD step does
            with engine.perturbed([Direction(1, c)]):
                model(inputs)
        engine.add_([Direction(1, -0.1)])
    assert noise.numbers == 3 * engine.kept == 3 * 3 * len(blocks)

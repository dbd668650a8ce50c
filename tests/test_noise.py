"""Noise sources: determinism, row selection, the fused add, and the statistics SPSA relies on."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2lzo.noise import FLAT_SEGMENT, MAX_ROW, NOISE_KINDS, GaussianNoise, PoolNoise, noise_source

POOL = PoolNoise(seed=3, numel=1 << 16)  # a small pool keeps the tests fast; the statistics still hold
SOURCES = {"pool": POOL, "gaussian": GaussianNoise()}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw(source, seed, shape, dtype=torch.float32, rows=None):
    return source.draw(gen(seed), shape, dtype, torch.device("cpu"), rows)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_draws_are_deterministic_in_the_seed(kind):
    source = SOURCES[kind]
    assert torch.equal(draw(source, 7, (12, 5)), draw(source, 7, (12, 5)))
    assert not torch.equal(draw(source, 7, (12, 5)), draw(source, 8, (12, 5)))


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("shape", [(40, 6), (40,), (9, 2, 3), (3, MAX_ROW + 5)])
def test_rows_selects_the_same_numbers_as_the_full_draw(kind, shape):
    source = SOURCES[kind]
    rows = torch.tensor([0, 2, 2, shape[0] - 1])
    torch.testing.assert_close(draw(source, 5, shape, rows=rows), draw(source, 5, shape)[rows], rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(NOISE_KINDS),
       shape=st.one_of(st.just(()), st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)),
       alpha=st.floats(-2, 2, allow_nan=False), with_base=st.booleans(), with_mask=st.booleans(),
       seed=st.integers(0, 2**31))
def test_add_equals_base_plus_alpha_times_the_draw(kind, shape, alpha, with_base, with_mask, seed):
    source = SOURCES[kind]
    base = torch.randn(shape, generator=gen(seed + 1))
    mask = torch.rand(shape, generator=gen(seed + 2)) < 0.5 if with_mask else None
    z = draw(source, seed, shape)
    if mask is not None:
        z = z * mask
    out = torch.randn(shape, generator=gen(seed + 3))
    want = (base if with_base else out) + alpha * z
    source.add(out, base if with_base else None, gen(seed), alpha, mask)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_add_falls_back_for_non_contiguous_tensors():
    base = torch.randn(6, 8).t()
    out = torch.empty(6, 8).t()
    POOL.add(out, base, gen(1), 0.5)
    torch.testing.assert_close(out, base + 0.5 * draw(POOL, 1, (8, 6)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_entries_are_standard_normal(kind):
    z = draw(SOURCES[kind], 0, (4000, 256)) if kind == "gaussian" else draw(PoolNoise(seed=1), 0, (4000, 256))
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1) < 0.01
    assert abs(float((z**4).mean()) - 3) < 0.05  # Gaussian kurtosis, not e.g. +-1


@pytest.mark.parametrize("shape", [(6, 4), (24,)])  # rows and the flat-segment path
def test_pool_directions_are_isotropic(shape):
    """E[z z^T] = I: what makes (L+ - L-) / (2 eps) * z an unbiased gradient estimate (up to the pool's bias)."""
    draws = torch.stack([draw(POOL, s, shape).flatten() for s in range(6000)])
    second_moment = draws.T @ draws / len(draws)
    torch.testing.assert_close(second_moment, torch.eye(draws.shape[1]), rtol=0, atol=0.08)


def test_chunks_larger_than_the_pool_copy_independent_windows():
    shape = (80, 1000)  # 80k numbers > the 64k pool: no strided view fits
    rows = torch.tensor([3, 79])
    torch.testing.assert_close(draw(POOL, 6, shape, rows=rows), draw(POOL, 6, shape)[rows], rtol=0, atol=0)
    base, out = torch.randn(shape), torch.empty(shape)
    POOL.add(out, base, gen(6), 0.25)
    torch.testing.assert_close(out, base + 0.25 * draw(POOL, 6, shape), rtol=1e-6, atol=1e-6)


def test_long_rows_use_flat_segments():
    z = draw(POOL, 2, (2, MAX_ROW + 1))
    assert z.shape == (2, MAX_ROW + 1)
    flat = z.flatten()
    # consecutive segments come from independent windows: not a shifted copy of one another
    assert not torch.equal(flat[:FLAT_SEGMENT].abs(), flat[FLAT_SEGMENT:2 * FLAT_SEGMENT].abs())


def test_pool_dtypes_and_seeds():
    assert draw(POOL, 1, (5, 3), dtype=torch.bfloat16).dtype == torch.bfloat16
    assert not torch.equal(draw(PoolNoise(seed=1, numel=1 << 16), 4, (5, 3)), draw(POOL, 4, (5, 3)))


def test_bad_names_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="unknown noise 'uniform'"):
        noise_source("uniform")
    with pytest.raises(ValueError, match="needs at least"):
        PoolNoise(numel=100)


def test_config_and_builder_name_the_choices():
    from l2lzo.errors import L2LZOError
    from l2lzo.finetune import FinetuneConfig
    from l2lzo.models import CAUSAL, tiny_model
    from l2lzo.optim import build_optimizer

    with pytest.raises(L2LZOError, match="--noise must be one of pool, gaussian"):
        FinetuneConfig(noise="uniform").validate()
    with pytest.raises(L2LZOError, match="unknown noise 'uniform'"):
        build_optimizer("fo-sgd", tiny_model(CAUSAL).model, lr=1e-3, noise="uniform")
    with pytest.raises(L2LZOError, match="unknown noise 'uniform'"):  # the same one-line error for ZO
        build_optimizer("zo-sgd", tiny_model(CAUSAL).model, lr=1e-3, noise="uniform")
    opt = build_optimizer("zo-sgd", tiny_model(CAUSAL).model, lr=1e-3, noise="gaussian")
    assert isinstance(opt.engine.noise_source, GaussianNoise)

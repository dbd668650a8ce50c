"""Noise sources: determinism, row selection, the fused add, and the statistics SPSA relies on."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2lzo.noise import MAX_SEGMENT, MIN_SEGMENT, NOISE_KINDS, GaussianNoise, PoolNoise, noise_source, segment_length

POOL = PoolNoise(seed=3, numel=1 << 16)  # a small pool keeps the tests fast; the statistics still hold
SOURCES = {"pool": POOL, "gaussian": GaussianNoise()}
LONG_SHAPES = [(3, 3000), (2, 2053), (2, 1031), (2100,), (4, 2048)]  # divisible, prime-ish, 1-D, exact


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw(source, seed, shape, dtype=torch.float32, rows=None):
    return source.draw(seed, shape, dtype, torch.device("cpu"), rows)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_draws_are_deterministic_in_the_seed(kind):
    source = SOURCES[kind]
    assert torch.equal(draw(source, 7, (12, 5)), draw(source, 7, (12, 5)))
    assert not torch.equal(draw(source, 7, (12, 5)), draw(source, 8, (12, 5)))


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("shape", [(40, 6), (40,), (9, 2, 3), *LONG_SHAPES])
def test_rows_selects_the_same_numbers_as_the_full_draw(kind, shape):
    source = SOURCES[kind]
    rows = torch.tensor([0, 1, 1, shape[0] - 1])
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
    source.add(out, base if with_base else None, seed, alpha, mask)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_add_falls_back_for_non_contiguous_tensors():
    base = torch.randn(6, 8).t()
    out = torch.empty(6, 8).t()
    POOL.add(out, base, 1, 0.5)
    torch.testing.assert_close(out, base + 0.5 * draw(POOL, 1, (8, 6)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_entries_are_standard_normal(kind):
    z = draw(SOURCES[kind], 0, (4000, 256)) if kind == "gaussian" else draw(PoolNoise(seed=1), 0, (4000, 256))
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1) < 0.01
    assert abs(float((z**4).mean()) - 3) < 0.05  # Gaussian kurtosis, not e.g. +-1


@pytest.mark.parametrize("shape", LONG_SHAPES)
@pytest.mark.parametrize("with_base", [True, False])
def test_add_equals_base_plus_alpha_times_the_draw_for_long_rows(shape, with_base):
    base, out = torch.randn(shape, generator=gen(1)), torch.randn(shape, generator=gen(2))
    want = (base if with_base else out) + 0.3 * draw(POOL, 9, shape)
    POOL.add(out, base if with_base else None, 9, 0.3)
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)


def window_of(segment: torch.Tensor, pool: torch.Tensor) -> tuple[int, int] | None:
    """(offset, sign) if ``segment`` is sign * pool[offset : offset + len(segment)], else None."""
    windows = pool.unfold(0, len(segment), 1)
    for sign in (1, -1):
        hits = (windows == sign * segment).all(dim=1).nonzero()
        if len(hits):
            return int(hits[0]), sign
    return None


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 3), row=st.integers(1, 5000), seed=st.integers(0, 2**31))
def test_pool_noise_is_made_of_sign_flipped_pool_windows_of_at_most_max_segment(rows, row, seed):
    """Every segment (the row cut at its largest divisor <= MAX_SEGMENT) is one +-window of the pool."""
    pool = PoolNoise(seed=5, numel=1 << 13)
    z = draw(pool, seed, (rows, row))
    length = segment_length(row)
    if length < MIN_SEGMENT and length != row:  # no usable divisor: flat segments of MAX_SEGMENT
        length = MAX_SEGMENT
    for segment in z.flatten().split(length):
        assert window_of(segment, pool._base) is not None


@pytest.mark.parametrize("shape", [(2, 3000), (4096,), (3, 2048)])
def test_long_rows_take_independent_windows(shape):
    """The segments of a long row are not one long window (the within-window correlation grows with length):
    a segment continues the previous one's window with the same sign only by chance (stride = length)."""
    pool = PoolNoise(seed=5, numel=1 << 13)
    length = segment_length(shape[-1])
    continued = boundaries = 0
    for seed in range(20):
        for row in draw(pool, seed, shape).view(-1, shape[-1]):
            found = [window_of(segment, pool._base) for segment in row.split(length)]
            boundaries += len(found) - 1
            continued += sum(b == (a[0] + length, a[1]) for a, b in itertools.pairwise(found))
    assert boundaries > 0 and continued / boundaries < 0.3


@settings(max_examples=200, deadline=None)
@given(row=st.integers(1, 100_000))
def test_segments_divide_the_row(row):
    length = segment_length(row)
    assert row % length == 0 and 1 <= length <= MAX_SEGMENT and (row > MAX_SEGMENT or length == row)


@pytest.mark.parametrize("shape", [(8, 16), (256, 16)])  # strided windows, and independent windows (no fit)
def test_pool_second_moment_is_the_exact_one(shape):
    """Every segment starts at a uniform pool position: E[z z^T] is exactly ``segment_second_moment``.

    The pool is small, so its lag products (R = E[z z^T] - I) are large enough to see: the Monte Carlo
    estimate must match the exact moment and not the identity.
    """
    pool = PoolNoise(seed=2, numel=1 << 12)
    draws = torch.cat([draw(pool, s, shape) for s in range(2500)]).double()  # rows are segments
    estimate = draws.T @ draws / len(draws)
    exact = pool.segment_second_moment(shape[1])
    identity = torch.eye(shape[1], dtype=torch.float64)
    assert float((estimate - exact).norm()) < 0.5 * float((estimate - identity).norm())
    assert float((exact - identity).abs().max()) > 0.03  # the test can tell the two apart


def test_default_pool_bias_is_small_at_the_segment_cap():
    """The measured bias the docstring and README quote: |R g| / |g| and |R|op at MAX_SEGMENT."""
    moment = PoolNoise().segment_second_moment(MAX_SEGMENT)
    r = moment - torch.eye(MAX_SEGMENT, dtype=torch.float64)
    g = torch.randn(MAX_SEGMENT, 200, generator=gen(0), dtype=torch.float64)
    relative = ((r @ g).norm(dim=0) / g.norm(dim=0)).median()
    assert float(relative) < 0.02
    assert float(torch.linalg.eigvalsh(r).abs().max()) < 0.05


def test_chunks_larger_than_the_pool_copy_independent_windows():
    shape = (80, 1000)  # 80k numbers > the 64k pool: no strided view fits
    rows = torch.tensor([3, 79])
    torch.testing.assert_close(draw(POOL, 6, shape, rows=rows), draw(POOL, 6, shape)[rows], rtol=0, atol=0)
    base, out = torch.randn(shape), torch.empty(shape)
    POOL.add(out, base, 6, 0.25)
    torch.testing.assert_close(out, base + 0.25 * draw(POOL, 6, shape), rtol=1e-6, atol=1e-6)


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

    with pytest.raises(L2LZOError, match=r"unknown noise .uniform.: choose one of pool, gaussian"):
        FinetuneConfig(noise="uniform").validate()
    with pytest.raises(L2LZOError, match="unknown noise 'uniform'"):
        build_optimizer("fo-sgd", tiny_model(CAUSAL).model, lr=1e-3, noise="uniform")
    with pytest.raises(L2LZOError, match="unknown noise 'uniform'"):  # the same one-line error for ZO
        build_optimizer("zo-sgd", tiny_model(CAUSAL).model, lr=1e-3, noise="uniform")
    opt = build_optimizer("zo-sgd", tiny_model(CAUSAL).model, lr=1e-3, noise="gaussian")
    assert isinstance(opt.engine.noise_source, GaussianNoise)

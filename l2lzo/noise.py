"""Noise sources: z for one chunk of a block, drawn from a generator the engine seeds per chunk.

Two sources, both deterministic in (seed, block, chunk) and independent of thread count and order:

* ``gaussian``: fresh i.i.d. N(0, 1) numbers from torch's CPU ``normal_`` (MeZO's noise exactly). It runs
  on one thread at about 2.6-4 ns a number, so on a 2-core CPU the three noise sweeps of an SPSA step
  (L+ forward, L- forward, update) cost about as much as half a forward of SmolLM2-135M.
* ``pool`` (the default): every row of z is a window of a fixed pool of ``POOL_NUMEL`` standardized
  N(0, 1) numbers, multiplied by a random sign. A chunk's rows are windows at a random start and a random
  stride (never overlapping), so z is a strided view of the pool: the generator draws two integers per
  chunk and one sign per row, and perturbing a weight is one fused pass, theta + (c * sign) * window.

Why ``pool`` is a sound SPSA direction: each entry of z is N(0, 1) (a pool number); entries of different
rows are uncorrelated, as their signs are independent; within a row of length L, E[z z^T] is I plus the
pool's own lag autocorrelations, which are O(1/sqrt(POOL_NUMEL)) each, so the bias of the estimate
E[z z^T] g - g is at most about sqrt(L / POOL_NUMEL) * |g| (0.02 for L = 1536). Rows longer than
``MAX_ROW`` are cut into flat segments of ``FLAT_SEGMENT`` numbers, each with its own sign.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from l2lzo.errors import L2LZOError

POOL_NUMEL = 1 << 22  # 16 MiB of float32
MAX_ROW = 1 << 14
FLAT_SEGMENT = 1024
NOISE_KINDS = ("pool", "gaussian")


class NoiseSource(Protocol):
    """Draws z for one chunk from ``generator`` (already seeded for this chunk).

    ``parallel_chunks`` says whether the engine should draw chunks on several threads at once. ``draw``
    returns z; ``rows`` (indices into the chunk's first dimension) asks for those rows only: an embedding
    lookup needs the rows of the batch's tokens, not the whole vocabulary. ``add`` computes
    out = base + alpha * mask * z (base None: out += ...), which a source may do without materializing z.
    """

    parallel_chunks: bool

    def draw(self, generator: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device, rows: torch.Tensor | None = None) -> torch.Tensor: ...

    def add(self, out: torch.Tensor, base: torch.Tensor | None, generator: torch.Generator, alpha: float,
            mask: torch.Tensor | None = None) -> None: ...


class GaussianNoise:
    """Fresh i.i.d. N(0, 1) numbers (``normal_``)."""

    # normal_ runs on one thread: the engine draws chunks in parallel on its own thread pool.
    parallel_chunks = True

    def draw(self, generator, shape, dtype, device, rows=None):
        z = torch.empty(shape, dtype=dtype, device=device).normal_(generator=generator)
        return z if rows is None else z[rows]

    def add(self, out, base, generator, alpha, mask=None):
        z = self.draw(generator, tuple(out.shape), out.dtype, out.device)
        if mask is not None:
            z.mul_(mask)
        if base is None:
            out.add_(z, alpha=alpha)
        else:
            torch.add(base, z, alpha=alpha, out=out)


class PoolNoise(GaussianNoise):
    """Sign-flipped windows of a fixed pool of standardized Gaussian numbers (see the module docstring)."""

    # Its reads and adds already run on torch's intra-op threads; more callers would oversubscribe the cores.
    parallel_chunks = False

    def __init__(self, seed: int = 0, numel: int = POOL_NUMEL):
        if numel < 2 * MAX_ROW:
            raise ValueError(f"the noise pool needs at least {2 * MAX_ROW} numbers, got {numel}")
        # Standardized in place, so E[z_i^2] over offsets is 1 up to the few numbers at the pool's ends.
        # Kept in float32 only (16 MiB, no larger temporaries): other dtypes are cast from it on first use.
        pool = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
        pool.sub_(pool.mean(dtype=torch.float64))
        pool.div_(torch.linalg.vector_norm(pool, dtype=torch.float64) / math.sqrt(numel - 1))
        self._pools: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {(pool.dtype, pool.device): pool}
        self._base = pool

    def _pool(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, device)
        if key not in self._pools:
            self._pools[key] = self._base.to(device=device, dtype=dtype)
        return self._pools[key]

    @staticmethod
    def _layout(shape: tuple[int, ...]) -> tuple[int, int, bool]:
        """(segment length, segment count, whether segments are the chunk's rows)."""
        numel = math.prod(shape)
        row = math.prod(shape[1:]) if len(shape) >= 2 else numel
        by_rows = len(shape) >= 2 and row <= MAX_ROW
        segment = row if by_rows else min(max(numel, 1), FLAT_SEGMENT)
        return segment, -(-numel // segment), by_rows

    def _segments(self, generator: torch.Generator, segment: int, count: int, dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows, signs): ``count`` pool windows of ``segment`` numbers as rows, and a +-1 per row.

        When the chunk fits in the pool, the windows start at offset + i * stride for a random offset and a
        random stride >= segment (windows never overlap): a strided view, read in place, no copy. Otherwise
        each window gets its own random offset and is copied out.
        """
        pool = self._pool(dtype, device)
        spare = pool.numel() - count * segment
        if spare >= 0:
            stride = segment + int(torch.randint(0, spare // max(count - 1, 1) + 1, (1,), generator=generator))
            start = int(torch.randint(0, pool.numel() - (count - 1) * stride - segment + 1, (1,),
                                      generator=generator))
            windows = pool.as_strided((count, segment), (stride, 1), start)
        else:
            offsets = torch.randint(0, pool.numel() - segment + 1, (count,), generator=generator)
            every = pool.as_strided((pool.numel() - segment + 1, segment), (1, 1))  # row i: pool[i : i + segment]
            windows = torch.index_select(every, 0, offsets.to(device))
        signs = torch.randint(0, 2, (count, 1), generator=generator).to(device=device, dtype=dtype).mul_(2).sub_(1)
        return windows, signs

    def draw(self, generator, shape, dtype, device, rows=None):
        segment, count, by_rows = self._layout(shape)
        windows, signs = self._segments(generator, segment, count, dtype, device)
        if rows is not None and by_rows:
            rows = rows.to(device)
            return (windows[rows] * signs[rows]).view(len(rows), *shape[1:])
        z = (windows * signs).view(-1)[:math.prod(shape)].view(shape)
        return z if rows is None else z[rows]

    def add(self, out, base, generator, alpha, mask=None):
        segment, count, by_rows = self._layout(tuple(out.shape))
        contiguous = out.is_contiguous() and (base is None or base.is_contiguous())
        if not (by_rows and contiguous):  # small 1-D blocks, very long rows: draw z, then add
            super().add(out, base, generator, alpha, mask)
            return
        windows, signs = self._segments(generator, segment, count, out.dtype, out.device)
        if mask is not None:
            windows = windows * mask.view(count, segment)
        # One pass over the chunk: out = base + (alpha * sign) * window, the sign riding on the row coefficient.
        coeffs = signs.mul_(alpha)
        if base is None:
            out.view(count, segment).addcmul_(coeffs, windows)
        else:
            torch.addcmul(base.view(count, segment), coeffs, windows, out=out.view(count, segment))


class UnknownNoiseError(L2LZOError, ValueError):
    """An unknown noise name: a one-line user error for the CLI, a ValueError for the engine's callers."""


def check_noise(kind: str) -> None:
    """Raise ``UnknownNoiseError`` listing the choices unless ``kind`` is one of ``NOISE_KINDS``."""
    if kind not in NOISE_KINDS:
        raise UnknownNoiseError(f"unknown noise {kind!r}: choose one of {', '.join(NOISE_KINDS)}")


def noise_source(kind: str, seed: int = 0) -> NoiseSource:
    """The noise source called ``kind`` (one of ``NOISE_KINDS``); ``seed`` fixes the pool."""
    check_noise(kind)
    return PoolNoise(seed) if kind == "pool" else GaussianNoise()

"""Noise sources: z for one chunk of a block, regenerated from the chunk's seed.

Two sources, both deterministic in (seed, block, chunk) and independent of thread count and order:

* ``gaussian``: fresh i.i.d. N(0, 1) numbers from torch's ``normal_`` (MeZO's noise exactly), drawn by a
  generator on the block's device. On CPU it runs on one thread at about 2.6-4 ns a number, so on a 2-core
  machine the three noise sweeps of an SPSA step cost about half a forward of SmolLM2-135M.
* ``pool`` (the default): z is cut into *segments* of at most ``MAX_SEGMENT`` numbers; each segment is a
  window of a fixed pool of ``POOL_NUMEL`` standardized N(0, 1) numbers times a random sign. Segments follow
  the rows: a row of length r is cut into r / s segments, s the largest divisor of r up to ``MAX_SEGMENT``
  (576 -> one segment of 576, 1536 -> two of 768, 11008 -> sixteen of 688). A chunk's segments start at
  (start + i * stride) mod M for a uniform random start in [0, M) and a random stride, M the number of
  window starts; the windows never overlap and z is one or two strided views of the pool, so perturbing a
  weight is one fused pass, theta + (c * sign) * window, with no copy. The seeded generator draws two
  integers per chunk and one sign per segment.

Why ``pool`` is a sound SPSA direction. Each entry is N(0, 1). Entries of different segments are
uncorrelated, as their signs are independent. Within a segment, every segment's start is uniform over all
M window starts (the random start makes it so whatever the stride), so E[z z^T] = I + R with R exactly the
pool's own lag products averaged over all windows (``PoolNoise.segment_second_moment``). Its size grows with
the segment length L, which is why segments are capped. Computed exactly on the default pool: a gradient's
relative bias |R g| / |g| (median over random g) is 0.0116 for L = 576, 0.0133 for L = 768 and 0.0153 for
L = 1024, and the worst direction |R|op is 0.032, 0.036 and 0.041 (``tests/test_noise.py`` holds the cap's
numbers). Before segments were capped and starts made uniform, whole rows were windows: SmolLM2's rows of
1536 showed 3.0% (|R|op 10%), and rows of 11008 (7B models) about 19%.

Chunks that do not fit the pool take independent uniform windows, copied out; rows with no divisor in
[``MIN_SEGMENT``, ``MAX_SEGMENT``] (a prime length, say) are cut into flat segments, and z is drawn, then added.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import Protocol

import torch

from l2lzo.errors import check_choice

POOL_NUMEL = 1 << 22  # 16 MiB of float32
MAX_SEGMENT = 1024
MIN_SEGMENT = 128  # a row whose largest divisor <= MAX_SEGMENT is shorter is cut into flat segments instead
NOISE_KINDS = ("pool", "gaussian")


class NoiseSource(Protocol):
    """Draws z for one chunk from its seed (an integer from ``l2lzo.perturbation.chunk_seed``).

    ``parallel_chunks`` says whether the engine should draw chunks on several threads at once. ``draw``
    returns z; ``rows`` (indices into the chunk's first dimension) asks for those rows only: an embedding
    lookup needs the rows of the batch's tokens, not the whole vocabulary. ``add`` computes
    out = base + alpha * mask * z (base None: out += ...), which a source may do without materializing z.
    """

    parallel_chunks: bool

    def draw(self, seed: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
             rows: torch.Tensor | None = None) -> torch.Tensor: ...

    def add(self, out: torch.Tensor, base: torch.Tensor | None, seed: int, alpha: float,
            mask: torch.Tensor | None = None) -> None: ...


class _Generators(threading.local):
    """One reusable generator per (thread, device): reseeding is cheap, creating one is not."""

    def get(self, seed: int, device: torch.device | str = "cpu") -> torch.Generator:
        device = torch.device(device)
        cache = self.__dict__.setdefault("by_device", {})
        if device not in cache:
            cache[device] = torch.Generator(device=device)
        return cache[device].manual_seed(seed)


class GaussianNoise:
    """Fresh i.i.d. N(0, 1) numbers (``normal_``), drawn on the block's device."""

    # normal_ runs on one thread on CPU: the engine draws chunks in parallel on its own thread pool.
    parallel_chunks = True

    def __init__(self):
        self._generators = _Generators()

    def draw(self, seed, shape, dtype, device, rows=None):
        z = torch.empty(shape, dtype=dtype, device=device).normal_(generator=self._generators.get(seed, device))
        return z if rows is None else z[rows]

    def add(self, out, base, seed, alpha, mask=None):
        z = self.draw(seed, tuple(out.shape), out.dtype, out.device)
        if mask is not None:
            z.mul_(mask)
        if base is None:
            out.add_(z, alpha=alpha)
        else:
            torch.add(base, z, alpha=alpha, out=out)


@functools.lru_cache(maxsize=4096)
def segment_length(row: int) -> int:
    """The largest divisor of ``row`` that is at most ``MAX_SEGMENT``: segments then never straddle rows."""
    if row <= MAX_SEGMENT:
        return max(row, 1)
    return next(d for d in range(MAX_SEGMENT, 0, -1) if row % d == 0)


@dataclass(frozen=True)
class _Layout:
    """How a chunk is cut: ``count`` segments of ``length`` numbers; ``aligned``: they tile the rows exactly."""

    length: int
    count: int
    aligned: bool

    @classmethod
    def of(cls, shape: tuple[int, ...]) -> _Layout:
        numel = math.prod(shape)
        row = math.prod(shape[1:]) if len(shape) >= 2 else numel
        length = segment_length(row)
        if length == row or length >= MIN_SEGMENT:
            return cls(length, numel // length, True)
        flat = min(numel, MAX_SEGMENT)  # e.g. a prime row length: flat segments, the last one cut short
        return cls(flat, -(-numel // flat), False)


@dataclass(frozen=True)
class _Placement:
    """Where a chunk's segments start in the pool, and their signs.

    Strided: segment i starts at (start + i * stride) mod ``starts``, which wraps at most once (count * stride
    <= starts), so the segments are two strided views. Otherwise ``offsets`` lists every segment's start.
    """

    start: int
    stride: int
    starts: int
    count: int
    signs: torch.Tensor  # (count, 1), +-1
    offsets: torch.Tensor | None = None

    @property
    def unwrapped(self) -> int:
        """How many segments come before the wrap."""
        return min(self.count, -(-(self.starts - self.start) // self.stride))

    def pieces(self, pool: torch.Tensor, length: int) -> list[tuple[int, int, torch.Tensor]]:
        """(first segment, end segment, windows) covering all segments; windows are views where possible."""
        if self.offsets is not None:
            every = pool.as_strided((pool.numel() - length + 1, length), (1, 1))  # row i: pool[i : i + length]
            return [(0, self.count, torch.index_select(every, 0, self.offsets.to(pool.device)))]
        j = self.unwrapped
        pieces = [(0, j, pool.as_strided((j, length), (self.stride, 1), self.start))]
        if j < self.count:
            wrapped = self.start + j * self.stride - self.starts
            pieces.append((j, self.count, pool.as_strided((self.count - j, length), (self.stride, 1), wrapped)))
        return pieces

    def windows(self, pool: torch.Tensor, length: int, segments: torch.Tensor) -> torch.Tensor:
        """The windows of some segments (indices), copied out."""
        if self.offsets is not None:
            offsets = self.offsets[segments]
        else:
            offsets = (self.start + segments * self.stride) % self.starts
        every = pool.as_strided((pool.numel() - length + 1, length), (1, 1))
        return torch.index_select(every, 0, offsets.to(pool.device))


class PoolNoise(GaussianNoise):
    """Sign-flipped windows of a fixed pool of standardized Gaussian numbers (see the module docstring)."""

    # Its reads and adds already run on torch's intra-op threads; more callers would oversubscribe the cores.
    parallel_chunks = False

    def __init__(self, seed: int = 0, numel: int = POOL_NUMEL):
        super().__init__()
        if numel < 4 * MAX_SEGMENT:
            raise ValueError(f"the noise pool needs at least {4 * MAX_SEGMENT} numbers, got {numel}")
        # Standardized in place, so E[z_i^2] over windows is 1 up to the few numbers at the pool's ends.
        # Kept in float32 only (16 MiB, no larger temporaries): other dtypes and devices are cast from it on use.
        pool = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
        pool.sub_(pool.mean(dtype=torch.float64))
        pool.div_(torch.linalg.vector_norm(pool, dtype=torch.float64) / math.sqrt(numel - 1))
        self._pools: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {(pool.dtype, pool.device): pool}
        self._base = pool
        # Every window of up to MAX_SEGMENT numbers may start at any of these positions.
        self.starts = numel - MAX_SEGMENT + 1

    def _pool(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (dtype, torch.device(device))
        if key not in self._pools:
            self._pools[key] = self._base.to(device=device, dtype=dtype)
        return self._pools[key]

    def _place(self, seed: int, layout: _Layout) -> _Placement:
        """Draw where the segments start (the integers come from a CPU generator on every device)."""
        gen = self._generators.get(seed)
        count = layout.count
        if count * layout.length <= self.starts:
            stride = int(torch.randint(layout.length, self.starts // count + 1, (1,), generator=gen))
            start = int(torch.randint(0, self.starts, (1,), generator=gen))
            offsets = None
        else:  # the chunk does not fit: independent uniform starts (windows may then overlap)
            stride = start = 0
            offsets = torch.randint(0, self.starts, (count,), generator=gen)
        signs = torch.randint(0, 2, (count, 1), generator=gen).mul_(2).sub_(1)
        return _Placement(start, stride, self.starts, count, signs, offsets)

    def draw(self, seed, shape, dtype, device, rows=None):
        layout = _Layout.of(shape)
        placement = self._place(seed, layout)
        pool = self._pool(dtype, device)
        signs = placement.signs.to(device=device, dtype=dtype)
        if rows is not None and layout.aligned and len(shape) >= 2:
            per_row = math.prod(shape[1:]) // layout.length
            segments = (rows.cpu().unsqueeze(1) * per_row + torch.arange(per_row)).flatten()
            picked = placement.windows(pool, layout.length, segments) * signs[segments.to(device)]
            return picked.view(len(rows), *shape[1:])
        z = torch.cat([windows * signs[i:j] for i, j, windows in placement.pieces(pool, layout.length)])
        z = z.view(-1)[:math.prod(shape)].view(shape)
        return z if rows is None else z[rows]

    def add(self, out, base, seed, alpha, mask=None):
        layout = _Layout.of(tuple(out.shape))
        contiguous = out.is_contiguous() and (base is None or base.is_contiguous())
        if not (layout.aligned and contiguous):  # flat segments or strided tensors: draw z, then add
            super().add(out, base, seed, alpha, mask)
            return
        placement = self._place(seed, layout)
        shape = (layout.count, layout.length)
        target = out.view(shape)
        source = None if base is None else base.view(shape)
        mask = None if mask is None else mask.view(shape)
        # The sign rides on the segment's coefficient: out = base + (alpha * sign) * window, one pass.
        coeffs = placement.signs.to(device=out.device, dtype=out.dtype).mul_(alpha)
        for i, j, windows in placement.pieces(self._pool(out.dtype, out.device), layout.length):
            if mask is not None:
                windows = windows * mask[i:j]
            if source is None:
                target[i:j].addcmul_(coeffs[i:j], windows)
            else:
                torch.addcmul(source[i:j], coeffs[i:j], windows, out=target[i:j])

    @torch.no_grad()
    def segment_second_moment(self, length: int) -> torch.Tensor:
        """E[z z^T] of one segment of ``length`` numbers, exactly (float64, length x length).

        Every segment starts at a uniform one of the ``starts`` positions, so entry (a, a + k) is the mean of
        pool[o + a] * pool[o + a + k] over all o < starts: the pool's full lag-k product sum (by FFT) minus
        the few products outside [a, a + starts).
        """
        if not 1 <= length <= MAX_SEGMENT:
            raise ValueError(f"a segment has 1..{MAX_SEGMENT} numbers, got {length}")
        pool = self._base.double()
        n, m = pool.numel(), self.starts
        spectrum = torch.fft.rfft(pool, 2 * n)
        lag_sums = torch.fft.irfft(spectrum * spectrum.conj(), 2 * n)[:length]  # sum_o pool[o] pool[o + k]
        moment = torch.zeros(length, length, dtype=torch.float64)
        for k in range(length):
            a = torch.arange(length - k)
            head = torch.cat([torch.zeros(1, dtype=torch.float64), (pool[:length] * pool[k:length + k]).cumsum(0)])
            tail_products = pool[m:n - k] * pool[m + k:n]  # products at o >= m, the only ones past any a + m
            tail = torch.cat([tail_products.flip(0).cumsum(0).flip(0), torch.zeros(1, dtype=torch.float64)])
            values = (lag_sums[k] - head[a] - tail[a]) / m
            moment[a, a + k] = values
            moment[a + k, a] = values
        return moment


def check_noise(kind: str) -> None:
    """Raise ``ConfigError`` listing the choices unless ``kind`` is one of ``NOISE_KINDS``."""
    check_choice("noise", kind, NOISE_KINDS)


def noise_source(kind: str, seed: int = 0) -> NoiseSource:
    """The noise source called ``kind`` (one of ``NOISE_KINDS``); ``seed`` fixes the pool."""
    check_noise(kind)
    return PoolNoise(seed) if kind == "pool" else GaussianNoise()

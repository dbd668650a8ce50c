"""Sparse perturbation: a 0/1 mask on z that keeps a fixed fraction of each block's coordinates.

Three ways to choose the kept coordinates (ZO-Bench's gradient sparsity, Sparse-MeZO):

* ``random``: exactly ``round(density * n)`` coordinates of every noise chunk, drawn by a seeded
  permutation (an exact fraction, unlike ZO-Bench's Gaussian-quantile approximation);
* ``magnitude``: exactly the k coordinates whose |theta| is smallest (ties broken by position), as
  Sparse-MeZO found perturbing the small weights works best; k counts per block (``layer`` scope) or
  over all trainable tensors (``global`` scope);
* ``sensitive``: a static mask made once per model (``l2lzo.policy.sensitivity``: the top squared-gradient
  coordinates, SensZOQ), from a mask file or a policy artifact that carries one; its density is the mask's.
  It is not a ``SparseMask``: the optimizer runs it on ``l2lzo.indexed_perturbation``, which draws and adds
  only the kept coordinates.

Random and magnitude masks are recomputed every ``resample_every`` steps and kept bit-packed (1 bit per
parameter, 1/32 of fp32 theta), so perturbations and the update of a step use the same mask without redrawing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from l2lzo.blocks import Block
from l2lzo.errors import ConfigError, check_choice
from l2lzo.perturbation import PerturbationEngine, chunk_seed

if TYPE_CHECKING:
    from l2lzo.policy.sensitivity import SensitivityMask

SPARSE_MODES = ("random", "magnitude")
SENSITIVE = "sensitive"  # a static mask (--sparse-mask, or the policy's): not a --sparse-mode
SPARSE_SCOPES = ("layer", "global")
_BITS = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)
# Mask seeds are chunk_seed(run seed, step, _MASK_STREAM): a stream no query index reaches, so masks share no
# seed with the noise, and runs whose seeds differ by a multiple of the resample interval get different masks.
_MASK_STREAM = 1 << 40


@dataclass(frozen=True)
class SparsityConfig:
    """``sparsity`` is the fraction of z set to zero (0.9 keeps 10% of the coordinates); in mode
    ``sensitive`` the loaded ``mask`` sets it and ``sparsity`` stays 0."""

    sparsity: float
    mode: str = "random"
    scope: str = "layer"
    resample_every: int = 100
    mask: SensitivityMask | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        check_choice("sparse mode", self.mode, (*SPARSE_MODES, SENSITIVE))
        if (self.mode == SENSITIVE) != (self.mask is not None):
            raise ConfigError("a sensitivity mask and sparse mode 'sensitive' go together")
        if self.mask is not None and self.sparsity:
            raise ConfigError("--sparse-mask sets the density itself: drop --sparsity")
        check_choice("sparse scope", self.scope, SPARSE_SCOPES)
        if self.resample_every < 1:
            raise ConfigError(f"sparse resample interval must be >= 1, got {self.resample_every}")

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    @property
    def active(self) -> bool:
        """Whether z is masked at all."""
        return self.sparsity > 0 or self.mask is not None


class SparseMask:
    """The engine's ``ChunkMask``: bit-packed masks per (block, chunk), refreshed by ``maybe_resample``."""

    def __init__(self, engine: PerturbationEngine, config: SparsityConfig, seed: int = 0):
        if config.mode == SENSITIVE:
            raise ValueError("a sensitivity mask runs on IndexedPerturbationEngine, not as a SparseMask")
        self.engine = engine
        self.config = config
        self.seed = seed
        self._packed: dict[tuple[int, int], torch.Tensor] = {}
        self.resampled_at: int | None = None

    def __call__(self, block: Block, chunk: int) -> torch.Tensor | None:
        shape = self._chunk_shape(block, chunk)
        return _unpack(self._packed[(block.index, chunk)], shape.numel()).view(shape)

    def _chunk_shape(self, block: Block, chunk: int) -> torch.Size:
        r0, r1 = self.engine.chunks(block)[chunk]
        return torch.Size((r1 - r0, *block.shape[1:]) if block.shape else ())

    @property
    def nbytes(self) -> int:
        """Memory the masks take."""
        return sum(p.numel() for p in self._packed.values())

    def state_dict(self) -> dict:
        """The current masks and when they were drawn (a magnitude mask depends on theta at that step)."""
        return {"resampled_at": self.resampled_at,
                "packed": {f"{b}.{c}": bits.clone() for (b, c), bits in self._packed.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()``'s output."""
        self.resampled_at = state["resampled_at"]
        self._packed = {tuple(int(i) for i in key.split(".")): bits.clone() for key, bits in state["packed"].items()}

    def maybe_resample(self, step: int) -> None:
        """Draw new masks at step 0 and every ``resample_every`` steps after."""
        if self.resampled_at is None or step - self.resampled_at >= self.config.resample_every:
            self.resample(step)

    @torch.no_grad()
    def resample(self, step: int) -> None:
        blocks = self.engine.blocks
        if self.config.mode == "random":
            step_seed = chunk_seed(self.seed, step, _MASK_STREAM)
            for block in blocks:
                for chunk in range(len(self.engine.chunks(block))):
                    numel = self._chunk_shape(block, chunk).numel()
                    gen = torch.Generator().manual_seed(chunk_seed(step_seed, block.index, chunk))
                    keep = torch.zeros(numel, dtype=torch.bool)
                    keep[torch.randperm(numel, generator=gen)[: round(self.config.density * numel)]] = True
                    self._packed[(block.index, chunk)] = _pack(keep)
        else:
            groups = [blocks] if self.config.scope == "global" else [[b] for b in blocks]
            for group in groups:
                k = round(self.config.density * sum(b.numel for b in group))
                threshold = kth_smallest_magnitude(group, k)
                # Everything below the threshold, then ties at it in order until exactly k are kept
                # (ties are common: a fresh norm weight is all ones).
                ties = k - sum(int((b.param.detach().abs().float() < threshold).sum()) for b in group)
                for block in group:
                    for chunk, (r0, r1) in enumerate(self.engine.chunks(block)):
                        rows = block.param.detach()[r0:r1] if block.shape else block.param.detach()
                        magnitude = rows.abs().float().flatten()
                        keep = magnitude < threshold
                        at = (magnitude == threshold).nonzero().flatten()[:max(ties, 0)]
                        keep[at] = True
                        ties -= at.numel()
                        self._packed[(block.index, chunk)] = _pack(keep)
        self.resampled_at = step

    def density(self, blocks: list[Block] | None = None) -> float:
        """Fraction of the coordinates of ``blocks`` (default: all) that the current masks keep."""
        blocks = self.engine.blocks if blocks is None else blocks
        kept = sum(int(self(b, c).sum()) for b in blocks for c in range(len(self.engine.chunks(b))))
        return kept / sum(b.numel for b in blocks)


def kth_smallest_magnitude(blocks: list[Block], k: int) -> float:
    """The k-th smallest |theta| over ``blocks`` (k >= 1), found by bisection on float32 bit patterns.

    Counting per block needs no copy of all magnitudes (a global sort over a 135M model would take 0.5 GB);
    the bisection runs over the 31-bit ordered integer image of non-negative floats, so it is exact.
    """
    if k < 1:
        return -1.0  # keeps nothing
    lo, hi = 0, 0x7F800000  # bit patterns of 0.0 and +inf, ordered like the floats they encode
    while lo < hi:
        mid = (lo + hi) // 2
        bound = torch.tensor(mid, dtype=torch.int32).view(torch.float32)
        count = sum(int((b.param.detach().abs().float() <= bound).sum()) for b in blocks)
        if count >= k:
            hi = mid
        else:
            lo = mid + 1
    return float(torch.tensor(lo, dtype=torch.int32).view(torch.float32))


def _pack(bits: torch.Tensor) -> torch.Tensor:
    flat = bits.flatten()
    padded = torch.zeros((flat.numel() + 7) // 8 * 8, dtype=torch.uint8)
    padded[: flat.numel()] = flat
    return (padded.view(-1, 8) * _BITS).sum(dim=1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return ((packed.unsqueeze(1) & _BITS) != 0).flatten()[:numel]

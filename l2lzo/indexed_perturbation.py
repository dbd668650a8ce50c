"""Perturbation on a fixed set of coordinates, at a cost proportional to their number (SensZOQ's static subset).

A sensitivity mask (``l2lzo.policy.sensitivity``) keeps k of a block's n coordinates, 0.1% of them by default. Masking a
dense z would still draw and add n numbers per sweep; here z_b *is* k numbers, drawn from (seed, block) and
placed at the block's k flat indices (zero elsewhere). A perturbed forward writes theta_b[idx] + c * sigma_b * z_b
into the parameter in place, runs the model as it is, and copies the k saved values back: no hook, no temporary
the size of a block, and theta bitwise restored (the saved values are copied back, not subtracted), also when
the forward raises. An update is one ``index_add_`` of k numbers.

Everything the dense engine offers still works: ``noise``/``noise_chunk`` give z in its dense form (zeros off the
indices) for forward-mode tangents and tests, ``gradient_chunks`` feeds sign, momentum and Adam, and
``inner_products`` reads only the k coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch

from l2lzo.blocks import Block
from l2lzo.perturbation import ChunkMask, Direction, PerturbationEngine, chunk_seed


def is_index_set(indices: torch.Tensor, size: int) -> bool:
    """Whether ``indices`` are sorted, distinct and in [0, size): the form masks store and this engine takes."""
    return not indices.numel() or bool(
        indices[0] >= 0 and indices[-1] < size and not (indices[1:] <= indices[:-1]).any())


class IndexedPerturbationEngine(PerturbationEngine):
    """A ``PerturbationEngine`` whose z_b is non-zero only at ``indices[block name]`` (sorted flat positions).

    Args:
        blocks: as for ``PerturbationEngine``.
        indices: per block name, the sorted, distinct flat indices to perturb (int tensors; may be empty).
        **kwargs: ``chunk_numel``, ``threads``, ``noise``, ``noise_seed`` as for ``PerturbationEngine``.
    """

    def __init__(self, blocks: Sequence[Block], indices: Mapping[str, torch.Tensor], **kwargs):
        super().__init__(blocks, **kwargs)
        missing = [b.name for b in self.blocks if b.name not in indices]
        if missing:
            raise ValueError(f"no indices for {len(missing)} blocks, e.g. {missing[0]!r}")
        self.indices = {b.index: indices[b.name].to(device=b.param.device, dtype=torch.long) for b in self.blocks}
        for block in self.blocks:
            if not is_index_set(self.indices[block.index], block.numel):
                raise ValueError(f"indices of {block.name!r} must be sorted, distinct and in [0, {block.numel})")
            if not block.param.is_contiguous():
                raise ValueError(f"{block.name!r} is not contiguous: its flat indices have no in-place view")

    @property
    def kept(self) -> int:
        """How many coordinates are perturbed, over all blocks."""
        return sum(idx.numel() for idx in self.indices.values())

    @property
    def nbytes(self) -> int:
        """Memory the indices take."""
        return sum(idx.numel() * idx.element_size() for idx in self.indices.values())

    def set_mask(self, mask: ChunkMask | None) -> None:
        if mask is not None:
            raise ValueError("an indexed engine perturbs its own coordinates; it takes no other mask")
        super().set_mask(None)

    # ---- noise -------------------------------------------------------------------------------------

    def sparse_noise(self, seed: int, block: Block) -> torch.Tensor:
        """z_b's k non-zero numbers for one seed, in the order of the block's indices."""
        k = self.indices[block.index].numel()
        if not k:
            return torch.empty(0, dtype=block.param.dtype, device=block.param.device)
        return self.noise_source.draw(chunk_seed(seed, block.index, 0), (k,), block.param.dtype, block.param.device)

    def _term(self, block: Block, directions: Sequence[Direction], sigma: torch.Tensor) -> torch.Tensor | None:
        """sum_j c_j sigma_b z_b(seed_j) at the block's indices (k numbers); None if no direction covers it."""
        covering = [d for d in directions if d.covers(block)]
        if not covering or not self.indices[block.index].numel():
            return None
        scale = float(sigma[block.index])
        term = self.sparse_noise(covering[0].seed, block).mul_(covering[0].coeff * scale)
        for d in covering[1:]:
            term.add_(self.sparse_noise(d.seed, block), alpha=d.coeff * scale)
        return term

    def _chunk_span(self, block: Block, chunk: int) -> tuple[int, int, int]:
        """(first flat index of the chunk, and the range [a, b) of the block's indices that fall in it)."""
        r0, r1 = self.chunks(block)[chunk]
        row = block.numel // block.shape[0] if block.shape else 1
        lo, hi = r0 * row, (r1 * row if block.shape else 1)
        a, b = torch.searchsorted(self.indices[block.index], torch.tensor([lo, hi], device=block.param.device)).tolist()
        return lo, a, b

    def noise_chunk(self, seed: int, block: Block, chunk: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        r0, r1 = self.chunks(block)[chunk]
        shape = (r1 - r0, *block.shape[1:]) if block.shape else ()
        z = torch.zeros(shape, dtype=block.param.dtype, device=block.param.device)
        lo, a, b = self._chunk_span(block, chunk)
        z.view(-1)[self.indices[block.index][a:b] - lo] = self.sparse_noise(seed, block)[a:b]
        return z if rows is None else z[rows]

    def _combine(self, out: torch.Tensor, base: torch.Tensor | None, block: Block, chunk: int,
                 directions: Sequence[Direction], sigma: torch.Tensor) -> None:
        if base is not None:
            out.copy_(base)
        term = self._term(block, directions, sigma)
        if term is not None:
            lo, a, b = self._chunk_span(block, chunk)
            out.view(-1).index_add_(0, self.indices[block.index][a:b] - lo, term[a:b])

    # ---- updates -----------------------------------------------------------------------------------

    @torch.no_grad()
    def add_(self, directions: Sequence[Direction], sigma: torch.Tensor | None = None) -> None:
        sigma = self.sigma if sigma is None else sigma
        for block in self.covered(directions):
            term = self._term(block, directions, sigma)
            if term is not None:
                block.param.data.view(-1).index_add_(0, self.indices[block.index], term)

    @torch.no_grad()
    def inner_products(self, seed: int, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        out = torch.zeros(len(self.blocks), dtype=torch.float64)
        for block, tensor in zip(self.blocks, tensors, strict=True):
            if tensor is not None and self.indices[block.index].numel():
                picked = tensor.reshape(-1)[self.indices[block.index]].double()
                out[block.index] = float(torch.dot(picked, self.sparse_noise(seed, block).double()))
        return out

    # ---- perturbed forwards ------------------------------------------------------------------------

    @contextmanager
    def perturbed(self, directions: Sequence[Direction], sigma: torch.Tensor | None = None):
        """Inside this context, theta_b[idx] holds theta_b[idx] + sum_j c_j sigma_b z_b(seed_j), in place.

        The k original values of each block are saved first and copied back on exit (exceptions too), so
        theta is bitwise what it was.
        """
        sigma = self.sigma if sigma is None else sigma
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for block in self.covered(directions):
                    term = self._term(block, directions, sigma)
                    if term is None:
                        continue
                    flat, idx = block.param.data.view(-1), self.indices[block.index]
                    saved.append((flat, idx, flat[idx]))  # advanced indexing copies
                    flat.index_add_(0, idx, term)
            yield
        finally:
            with torch.no_grad():
                for flat, idx, original in reversed(saved):
                    flat.index_copy_(0, idx, original)

"""A static sensitive-coordinate mask (SensZOQ, Sparse-MeZO): the coordinates ZO perturbs, chosen once per model.

Sensitivity is the squared gradient summed over a few batches (a diagonal Fisher estimate), from tasks that
are not the downstream task: SensZOQ finds that the top 0.1% by this score transfer across tasks. Selection
is exact: the ``round(density * n)`` highest scores, ties broken by position (blocks in model order, then
flat index), per block (``layer`` scope) or over all trainable tensors (``global``).

The mask file is safetensors: one sorted int32 tensor of flat indices per trainable tensor (by name), with
metadata naming the base model's fingerprint, the density, the scope, the source tasks and every tensor's
size, so a mask is refused on a model it was not made for. Indices cost 4 bytes per kept coordinate: at
density 0.1%, 0.54 MB for smollm2-135m (134.5M parameters) and 28 MB for a 7B model; a bitmap would take
n / 8 bytes whatever the density (16.8 MB and 875 MB), so indices are smaller below density 1/32.
Downstream, ``--sparse-mask`` runs ZO on ``l2lzo.indexed_perturbation``: only these coordinates are drawn and touched.

A policy artifact carries its mask as two tensors, whatever the number of trainable tensors (the registry caps
an artifact at 256 tensors; SmolLM2-135M has 272): ``mask.indices``, every tensor's sorted int32 indices
concatenated in model order, and ``mask.counts`` (int64), how many of them belong to each tensor; its
``mask`` metadata holds the density, scope, source tasks and the tensors' names and sizes. Indices stay local
to their tensor, so int32 suffices for any tensor under 2^31 coordinates, a 7B model's included.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from l2lzo.blocks import discover_blocks
from l2lzo.errors import L2LZOError
from l2lzo.files import atomic_write_bytes
from l2lzo.indexed_perturbation import is_index_set
from l2lzo.profiling import fold_gradients
from l2lzo.sparsity import SPARSE_SCOPES

FORMAT = "l2lzo-sensitivity-mask/1"
ARTIFACT_INDICES, ARTIFACT_COUNTS = "mask.indices", "mask.counts"


def squared_gradient_scores(model: torch.nn.Module,
                            closures: Iterable[Callable[[], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per trainable tensor, the sum over ``closures``' batches of its squared gradient (float32).

    Each gradient is folded into its score as soon as it is accumulated and then freed, so at most one full
    gradient set is alive besides the scores.
    """
    blocks = discover_blocks(model)
    scores = {b.name: torch.zeros(b.shape, dtype=torch.float32) for b in blocks}

    def fold(block, grad: torch.Tensor) -> None:
        scores[block.name] += grad.float().pow(2)

    fold_gradients(blocks, closures, fold)
    return scores


def top_indices(scores: dict[str, torch.Tensor], density: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """The sorted flat int32 indices of the ``round(density * n)`` highest scores (n per tensor or over all)."""
    if not 0 < density <= 1:
        raise L2LZOError(f"mask density must be in (0, 1], got {density}")
    if scope not in SPARSE_SCOPES:
        raise L2LZOError(f"unknown mask scope {scope!r}: choose from {', '.join(SPARSE_SCOPES)}")
    names = list(scores)
    if scope == "layer":
        return {n: _top(scores[n].flatten(), round(density * scores[n].numel())) for n in names}
    flat = torch.cat([scores[n].flatten() for n in names])
    kept = _top(flat, round(density * flat.numel())).long()
    out, start = {}, 0
    for n in names:
        size = scores[n].numel()
        inside = kept[(kept >= start) & (kept < start + size)] - start
        out[n] = inside.to(torch.int32)
        start += size
    return out


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k highest values, ties at the threshold going to the earliest positions.

    The k-th largest value is found by selection, not by sorting: a stable sort of SmolLM2-135M's 134M scores
    held index and sort buffers of several GB; selection needs one copy of the values.
    """
    if k == 0:
        return torch.empty(0, dtype=torch.int32)
    threshold = torch.kthvalue(values, values.numel() - k + 1).values
    above = (values > threshold).nonzero().flatten()
    ties = (values == threshold).nonzero().flatten()[:k - above.numel()]
    return torch.cat([above, ties]).sort().values.to(torch.int32)


@dataclass(frozen=True)
class SensitivityMask:
    """A loaded mask: sorted flat indices per tensor name, and what it was made from."""

    indices: dict[str, torch.Tensor]
    sizes: dict[str, int]
    density: float
    scope: str
    fingerprint: str
    tasks: list[str]

    @property
    def kept(self) -> int:
        return sum(int(i.numel()) for i in self.indices.values())

    def save(self, path: str | Path) -> Path:
        """Write the mask file atomically."""
        metadata = {"format": FORMAT, "density": repr(self.density), "scope": self.scope,
                    "fingerprint": self.fingerprint, "tasks": json.dumps(self.tasks), "sizes": json.dumps(self.sizes)}
        path = Path(path)
        atomic_write_bytes(path, save({n: i.contiguous() for n, i in self.indices.items()}, metadata=metadata))
        return path

    @classmethod
    def from_file(cls, path: str | Path) -> SensitivityMask:
        """Read and check a mask file: sorted, unique, in-range int32 indices; one-line errors."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise L2LZOError(f"no sensitivity mask at {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                indices = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError) as exc:
            raise L2LZOError(f"{path} is not a readable sensitivity mask: {exc}") from None
        if meta.get("format") != FORMAT:
            raise L2LZOError(f"{path} is not a sensitivity mask (format {meta.get('format')!r}, want {FORMAT})")
        try:
            sizes = {str(k): int(v) for k, v in json.loads(meta["sizes"]).items()}
            mask = cls(indices, sizes, float(meta["density"]), meta["scope"], meta["fingerprint"],
                       list(json.loads(meta["tasks"])))
        except (KeyError, ValueError, TypeError) as exc:
            raise L2LZOError(f"{path} has malformed metadata: {exc!r}") from None
        return mask._checked(str(path))

    def to_artifact(self) -> tuple[dict[str, np.ndarray], str]:
        """The two artifact tensors (see the module docstring) and the ``mask`` metadata JSON."""
        names = list(self.sizes)
        arrays = {ARTIFACT_INDICES: torch.cat([self.indices[n] for n in names]).numpy(),
                  ARTIFACT_COUNTS: np.array([self.indices[n].numel() for n in names], dtype=np.int64)}
        meta = {"format": FORMAT, "density": self.density, "scope": self.scope, "tasks": self.tasks,
                "sizes": [[n, self.sizes[n]] for n in names]}
        return arrays, json.dumps(meta)

    @classmethod
    def from_artifact(cls, arrays: dict[str, np.ndarray], meta_json: str, fingerprint: str,
                      where: str) -> SensitivityMask:
        """The mask ``to_artifact`` wrote, checked like a mask file; ``where`` names the artifact in errors."""
        try:
            meta = json.loads(meta_json)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, want {FORMAT}")
            sizes = {str(n): int(size) for n, size in meta["sizes"]}
            counts = torch.from_numpy(np.asarray(arrays[ARTIFACT_COUNTS]))
            flat = torch.from_numpy(np.asarray(arrays[ARTIFACT_INDICES]).copy())
            if counts.dtype != torch.int64 or counts.numel() != len(sizes) or int(counts.sum()) != flat.numel():
                raise ValueError("its counts do not match its tensors and indices")
            indices = dict(zip(sizes, flat.split(counts.tolist()), strict=True))
            mask = cls(indices, sizes, float(meta["density"]), str(meta["scope"]), fingerprint,
                       [str(t) for t in meta["tasks"]])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise L2LZOError(f"{where}: its sensitivity mask is malformed: {exc}") from None
        return mask._checked(where)

    def _checked(self, where: str) -> SensitivityMask:
        """``self`` if its indices fit its sizes (sorted, unique, in range, int32), else a one-line error."""
        if set(self.indices) != set(self.sizes):
            raise L2LZOError(f"{where}: its indices and its tensor sizes name different tensors")
        for name, idx in self.indices.items():
            if idx.dtype != torch.int32 or idx.dim() != 1:
                raise L2LZOError(f"{where}: indices of {name} must be 1-d int32")
            if not is_index_set(idx, self.sizes[name]):
                raise L2LZOError(f"{where}: indices of {name} are not sorted, unique and in [0, {self.sizes[name]})")
        return self

    def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse a base model the mask was not made for."""
        if fingerprint != self.fingerprint:
            raise L2LZOError(f"the sensitivity mask was made for fingerprint {self.fingerprint[:12]}..., but this "
                             f"model's is {fingerprint[:12]}...")

    def check_blocks(self, sizes: dict[str, int]) -> None:
        """Refuse trainable tensors other than the mask's (another fine-tuning scheme, or another model)."""
        if sizes != self.sizes:
            differ = sorted(n for n in set(sizes) | set(self.sizes) if sizes.get(n) != self.sizes.get(n))
            raise L2LZOError(f"the sensitivity mask does not fit these trainable tensors ({len(differ)} differ, "
                             f"e.g. {differ[0]}): it was made for another model or fine-tuning scheme")


def build_mask(model: torch.nn.Module, closures: Iterable[Callable[[], torch.Tensor]], *, density: float,
               scope: str, fingerprint: str, tasks: list[str]) -> SensitivityMask:
    """Score ``model`` on ``closures`` and keep the top ``density`` of its coordinates."""
    scores = squared_gradient_scores(model, closures)
    return SensitivityMask(top_indices(scores, density, scope), {n: s.numel() for n, s in scores.items()},
                           density, scope, fingerprint, tasks)


def profile_sensitivity(model: str, tasks: Sequence[str], *, scheme: str = "full", batches: int = 16,
                        batch_size: int = 8, density: float = 1e-3, scope: str = "global", seed: int = 0,
                        max_length: int = 64, progress: bool = True) -> SensitivityMask:
    """Build the mask of ``model`` (under ``scheme``) from ``batches`` training batches drawn in turn from
    ``tasks`` (by seed; dev and test examples are never used); ``progress``: a bar over the batches."""
    from tqdm import tqdm

    from l2lzo.finetune import grouped_loss
    from l2lzo.models import fingerprint, load_model
    from l2lzo.schemes import apply_scheme
    from l2lzo.scoring import Scorer
    from l2lzo.tasks import load_task

    if not tasks:
        raise L2LZOError("profile-sensitivity needs at least one task")
    if batches < 1 or batch_size < 1:
        raise L2LZOError(f"--batches and --batch-size must be >= 1, got {batches} and {batch_size}")
    loaded = load_model(model)
    base_fingerprint = fingerprint(loaded.model)  # the base model's, as a policy's
    scorer = Scorer(apply_scheme(loaded, scheme), max_length=max_length)
    pools = [load_task(t, seed=seed, dev_size=1, test_size=1).train for t in tasks]
    rng = torch.Generator().manual_seed(seed)
    closures = []
    for i in range(batches):
        pool = pools[i % len(pools)]
        picks = torch.randint(len(pool), (batch_size,), generator=rng).tolist()
        closures.append(grouped_loss(scorer, [pool[j] for j in picks]))
    scored = tqdm(closures, desc="sensitivity", unit="batch", disable=not progress)
    return build_mask(scorer.loaded.model, scored, density=density, scope=scope, fingerprint=base_fingerprint,
                      tasks=list(tasks))

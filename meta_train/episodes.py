"""Episodes: which task, which batches, and where on a trajectory theta starts.

A worker follows *trajectories*: theta starts at the pretrained weights, a task is drawn, and ``reset_every``
episodes run one after the other on it (so later episodes start from a point along a ZO fine-tune, as the
policy will see downstream); then theta is reset and the next task drawn. Everything random is a function of
(seed, rank, trajectory or episode index), so a resumed run draws the same episodes again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from l2lzo.blocks import Block
from l2lzo.tasks import Example, load_task


@dataclass(frozen=True)
class Episode:
    """One meta-training example: K train batches and a *different* held-out batch of one task."""

    task: str
    batches: list[list[Example]]
    heldout: list[Example]


class TaskPool:
    """The train splits of a pool of tasks (k-shot by seed), loaded once."""

    def __init__(self, names: Sequence[str], *, train_size: int, seed: int):
        self.names = list(names)
        self.train = {name: load_task(name, seed=seed, train_size=train_size).train for name in self.names}
        small = [n for n, examples in self.train.items() if len(examples) < 2]
        if small:
            raise ValueError(f"tasks with fewer than 2 train examples cannot give an episode: {', '.join(small)}")

    def episode(self, task: str, rng: random.Random, inner_steps: int, batch_size: int,
                heldout_size: int) -> Episode:
        """K train batches and a held-out batch, disjoint when the split is large enough (else they wrap)."""
        examples = self.train[task]
        order = list(range(len(examples)))
        rng.shuffle(order)
        heldout_size = min(heldout_size, len(examples) // 2)
        heldout = [examples[i] for i in order[:heldout_size]]
        rest = order[heldout_size:]
        batches = [[examples[rest[(step * batch_size + j) % len(rest)]] for j in range(batch_size)]
                   for step in range(inner_steps)]
        return Episode(task, batches, heldout)


class Trajectory:
    """The base model's trainable tensors along a trajectory, and the pretrained copy to reset them to.

    Meta-training may hold this copy (it is not a downstream job); ``snapshot``/``restore`` park a trajectory
    while validation runs from the pretrained weights.
    """

    def __init__(self, blocks: Sequence[Block]):
        self.blocks = list(blocks)
        self.pretrained = self.snapshot()

    def snapshot(self) -> list[torch.Tensor]:
        return [b.param.detach().clone() for b in self.blocks]

    @torch.no_grad()
    def restore(self, values: Sequence[torch.Tensor]) -> None:
        for block, value in zip(self.blocks, values, strict=True):
            block.param.copy_(value)

    def reset(self) -> None:
        self.restore(self.pretrained)


def episode_rng(seed: int, rank: int, index: int) -> random.Random:
    """The generator of one trajectory or episode: independent across seeds, workers and indices."""
    return random.Random(f"l2lzo-meta/{seed}/{rank}/{index}")

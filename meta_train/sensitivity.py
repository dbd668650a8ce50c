"""The meta-trainer's sensitivity phase: which coordinates a downstream ZO run should perturb (SensZOQ).

Before the first meta-step every worker scores its share of ``config.mask_batches`` train batches, drawn in turn
from every task of the meta-train pool, by squared gradients at the pretrained weights (backprop is fine here;
downstream stays forward-only); the scores are all-reduced, so every worker holds the same masks, and the top
fraction of coordinates is kept for each density in ``config.mask_densities``. Batch ``i`` is the same whatever
the number of workers (its task and examples depend on ``i`` and the seed only).
"""

from __future__ import annotations

from l2lzo.finetune import grouped_loss
from l2lzo.policy.sensitivity import SensitivityMask, squared_gradient_scores, top_indices
from l2lzo.scoring import Scorer
from meta_train.config import MetaTrainConfig
from meta_train.episodes import TaskPool, episode_rng

MASK_STREAM = -2  # episode_rng's rank for mask batches: no worker (ranks >= 0) or validation run (-1) uses it


def pool_masks(config: MetaTrainConfig, scorer: Scorer, pool: TaskPool, *, rank: int, world_size: int,
               all_reduce_mean, fingerprint: str) -> dict[float, SensitivityMask]:
    """One mask per density of ``config.mask_densities`` from this worker's share of the batches (see above);
    ``fingerprint`` is the base model's (before the scheme), as a policy's."""
    closures = []
    for i in range(rank, config.mask_batches, world_size):
        task = pool.names[i % len(pool.names)]
        examples = pool.train[task]
        batch = episode_rng(config.seed, MASK_STREAM, i).sample(examples, min(config.batch_size, len(examples)))
        closures.append(grouped_loss(scorer, batch))
    scores = squared_gradient_scores(scorer.loaded.model, closures)
    all_reduce_mean(list(scores.values()))
    sizes = {name: s.numel() for name, s in scores.items()}
    return {density: SensitivityMask(top_indices(scores, density, config.mask_scope), sizes, density,
                                     config.mask_scope, fingerprint, list(pool.names))
            for density in sorted(config.mask_densities)}

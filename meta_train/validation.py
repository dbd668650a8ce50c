"""Scoring a policy on the validation tasks: while it trains (the held-out gap) and at the end (fine-tunes).

* ``HeldoutGap``: fixed short ZO-SGD runs from the pretrained weights on each validation task (same seeds and
  batches every time), ending in the loss on a fixed slice of the task's dev split; the gap is the policy's
  loss minus sigma = 1's, relative to sigma = 1's (negative: the policy is better). sigma = 1's runs are made
  once. Cheap enough to log during training, and what a sweep is scored on.
* ``final_validation``: real ``l2lzo finetune`` runs of the validation tasks, policy and sigma = 1 at equal
  steps, eps and seeds, for each lr of the grid (extended while a best lr sits at its edge); each arm is
  recommended the lr where its own runs end with the lowest mean dev loss, so MeZO gets the policy's tuning
  budget, and the artifact records both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from l2lzo.finetune import FinetuneConfig, finetune, grouped_loss
from l2lzo.lr_grid import extend_at_edges
from l2lzo.optim import ZOSGD
from l2lzo.perturbation import chunk_seed
from l2lzo.policy.network import LearnedSigma, PerturbationPolicy
from l2lzo.scoring import Scorer
from l2lzo.tasks import load_task
from meta_train.config import MetaTrainConfig
from meta_train.episodes import Trajectory, episode_rng

DEV_SLICE = 64  # dev examples each validation run ends on


class HeldoutGap:
    """The policy's relative held-out loss gap to sigma = 1 on fixed validation runs (see the module docstring)."""

    def __init__(self, config: MetaTrainConfig, scorer: Scorer, trajectory: Trajectory):
        self.config, self.scorer, self.trajectory = config, scorer, trajectory
        self.runs = []
        for task in config.validation_tasks:
            splits = load_task(task, seed=config.seed, train_size=config.train_size)
            for _ in range(config.validation_seeds):
                rng = episode_rng(config.seed, -1, len(self.runs))  # rank -1: never a worker's stream
                batches = [rng.sample(splits.train, min(config.batch_size, len(splits.train)))
                           for _ in range(config.validation_steps)]
                self.runs.append((task, batches, splits.dev[:DEV_SLICE]))
        self.reference: dict[str, float] | None = None

    def _run(self, policy: PerturbationPolicy | None, index: int) -> float:
        _, batches, dev = self.runs[index]
        self.trajectory.reset()
        optimizer = ZOSGD(self.scorer.loaded.model, lr=self.config.resolved_lr(), eps=self.config.eps,
                          seed=chunk_seed(self.config.seed, index, 0x7E57), blocks=self.trajectory.blocks,
                          noise=self.config.noise)
        if policy is not None:
            optimizer.set_sigma_hook(LearnedSigma(policy, self.config.scheme, len(batches)))
        for batch in batches:
            optimizer.step(grouped_loss(self.scorer, batch))
        return self.scorer.evaluate(dev)["loss"]

    def __call__(self, policy: PerturbationPolicy, rank: int = 0, world_size: int = 1,
                 all_reduce_mean: Callable[[list[torch.Tensor]], None] | None = None) -> dict:
        """Per-run dev losses (policy, sigma = 1) and the mean relative gap; theta is left as it was found.

        With several workers, every worker calls this at the same meta-step: worker ``rank`` makes runs ``rank``,
        ``rank + world_size``, ... and ``all_reduce_mean`` shares the losses, so all get the same result. (On rank
        0 alone, the other workers waited idle: 15 of a 32-minute smollm2 run with 2 workers.)
        """
        parked = self.trajectory.snapshot()
        try:
            if self.reference is None:
                self.reference = self._shared(None, rank, world_size, all_reduce_mean)
            losses = self._shared(policy, rank, world_size, all_reduce_mean)
        finally:
            self.trajectory.restore(parked)
        gaps = [(loss - ref) / ref for loss, ref in zip(losses, self.reference, strict=True)]
        names = [f"{task}#{i}" for i, (task, _, _) in enumerate(self.runs)]
        return {"heldout_gap": sum(gaps) / len(gaps), "policy_loss": dict(zip(names, losses, strict=True)),
                "mezo_loss": dict(zip(names, self.reference, strict=True))}

    def _shared(self, policy: PerturbationPolicy | None, rank: int, world_size: int,
                all_reduce_mean: Callable[[list[torch.Tensor]], None] | None) -> list[float]:
        """Every run's loss: this worker's share made here, the rest from the others (zeros summed away)."""
        losses = torch.zeros(len(self.runs), dtype=torch.float64)
        for i in range(rank, len(self.runs), world_size):
            losses[i] = self._run(policy, i)
        if world_size > 1:
            all_reduce_mean([losses])
            losses *= world_size
        return losses.tolist()


ARMS = ("policy", "mezo")


def final_validation(config: MetaTrainConfig, policy_file: Path, output: Path,
                     say: Callable[[str], None] = print) -> dict:
    """Fine-tunes of the validation tasks, policy and sigma = 1, at every lr of the grid; picks each arm's lr.

    Both arms get the same tuning budget: the same tasks, steps, seeds and grid, and each is recommended the lr
    where its own runs end with the lowest mean dev loss (the artifact stores both; ``--compare`` runs MeZO at
    its own). A grid of 3 or more lrs is extended (``l2lzo.lr_grid.extend_at_edges``) while either arm's best lr
    sits at its edge; a shorter grid is taken as given.
    """
    grid = sorted(config.resolved_lr_grid())
    runs: dict[tuple[str, float], dict] = {}

    def run_lr(lr: float) -> None:
        for task in config.validation_tasks:
            pair = {}
            for arm, policy in zip(ARMS, (str(policy_file), None), strict=True):
                run = _validation_config(config, task, lr, policy, output / f"{task}_lr{lr:g}_{arm}.json")
                last = finetune(run, progress=False).evals[-1]
                pair[arm] = {"dev_loss": last["dev_loss"], "dev_accuracy": last["dev_accuracy"]}
            runs[(task, lr)] = {"task": task, "lr": lr, **pair}
            say(f"validation {task} lr {lr:g}: dev loss policy {pair['policy']['dev_loss']:.4f} vs sigma=1 "
                f"{pair['mezo']['dev_loss']:.4f}")

    for lr in grid:
        run_lr(lr)
    grid, extended = extend_at_edges(grid, run_lr, lambda g: [_best_lr(runs, g, arm) for arm in ARMS],
                                     say=lambda text: say(f"validation: {text}"))
    rows = [runs[(task, lr)] for lr in grid for task in config.validation_tasks]
    best = {arm: _best_lr(runs, grid, arm) for arm in ARMS}
    own = {arm: [runs[(t, best[arm])][arm] for t in config.validation_tasks] for arm in ARMS}
    at_policy_lr = [runs[(t, best["policy"])] for t in config.validation_tasks]
    return {
        "recommended_lr": best["policy"],
        "recommended_lr_sigma1": best["mezo"],
        "lr_grid": grid,
        "grid_extended": extended,
        "steps": config.final_steps,
        "validation_tasks": list(config.validation_tasks),
        "runs": rows,
        # The headline: each arm at its own recommended lr.
        "dev_loss_policy": _mean([r["dev_loss"] for r in own["policy"]]),
        "dev_loss_mezo": _mean([r["dev_loss"] for r in own["mezo"]]),
        "dev_accuracy_policy": _mean([r["dev_accuracy"] for r in own["policy"]]),
        "dev_accuracy_mezo": _mean([r["dev_accuracy"] for r in own["mezo"]]),
        "wins": sum(p["dev_loss"] < m["dev_loss"] for p, m in zip(own["policy"], own["mezo"], strict=True)),
        "tasks": len(config.validation_tasks),
        # Both at the policy's lr (the pre-2026-12 headline), for comparison.
        "wins_at_policy_lr": sum(r["policy"]["dev_loss"] < r["mezo"]["dev_loss"] for r in at_policy_lr),
    }


def _best_lr(runs: dict[tuple[str, float], dict], grid: Sequence[float], arm: str) -> float:
    """The lr whose runs of ``arm`` end with the lowest mean dev loss (the smaller lr on a tie)."""
    tasks = sorted({task for task, _ in runs})
    return min(grid, key=lambda lr: (_mean([runs[(t, lr)][arm]["dev_loss"] for t in tasks]), lr))


def _validation_config(config: MetaTrainConfig, task: str, lr: float, policy: str | None,
                       output: Path) -> FinetuneConfig:
    return FinetuneConfig(model=config.model, task=task, optimizer="zo-sgd", scheme=config.scheme,
                          steps=config.final_steps, lr=lr, eps=config.eps, batch_size=config.batch_size,
                          seed=config.seed, noise=config.noise, train_size=config.train_size,
                          eval_every=config.final_steps, max_length=config.max_length, test_size=50,
                          output=str(output), policy=policy)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


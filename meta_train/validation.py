"""Scoring a policy on the validation tasks: while it trains (the held-out gap) and at the end (fine-tunes).

* ``HeldoutGap``: fixed short ZO-SGD runs from the pretrained weights on each validation task (same seeds and
  batches every time), ending in the loss on a fixed slice of the task's dev split; the gap is the policy's
  loss minus sigma = 1's, relative to sigma = 1's (negative: the policy is better). sigma = 1's runs are made
  once. Cheap enough to log during training, and what a sweep is scored on.
* ``final_validation``: real ``l2lzo finetune`` runs of the validation tasks, policy vs sigma = 1 at equal
  steps, lr, eps and seeds, for each lr of the grid; the lr whose policy runs end with the lowest mean dev
  loss is the one the artifact recommends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from l2lzo.finetune import FinetuneConfig, finetune, grouped_loss
from l2lzo.optim import ZOSGD
from l2lzo.perturbation import chunk_seed
from l2lzo.policy_net import LearnedSigma, PerturbationPolicy
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


def final_validation(config: MetaTrainConfig, policy_file: Path, output: Path,
                     say: Callable[[str], None] = print) -> dict:
    """Fine-tunes of the validation tasks, policy vs sigma = 1, at every lr of the grid; picks the lr."""
    rows = []
    grid = config.resolved_lr_grid()
    for lr in grid:
        for task in config.validation_tasks:
            pair = {}
            for arm, policy in (("policy", str(policy_file)), ("mezo", None)):
                run = _validation_config(config, task, lr, policy, output / f"{task}_lr{lr:g}_{arm}.json")
                result = finetune(run, progress=False)
                last = result.evals[-1]
                pair[arm] = {"dev_loss": last["dev_loss"], "dev_accuracy": last["dev_accuracy"]}
            rows.append({"task": task, "lr": lr, **pair})
            say(f"validation {task} lr {lr:g}: dev loss policy {pair['policy']['dev_loss']:.4f} vs sigma=1 "
                f"{pair['mezo']['dev_loss']:.4f}")
    means = {lr: _mean([r["policy"]["dev_loss"] for r in rows if r["lr"] == lr]) for lr in grid}
    best = min(grid, key=means.get)
    chosen = [r for r in rows if r["lr"] == best]
    return {
        "recommended_lr": best,
        "lr_grid": grid,
        "steps": config.final_steps,
        "validation_tasks": list(config.validation_tasks),
        "runs": rows,
        "dev_loss_policy": _mean([r["policy"]["dev_loss"] for r in chosen]),
        "dev_loss_mezo": _mean([r["mezo"]["dev_loss"] for r in chosen]),
        "dev_accuracy_policy": _mean([r["policy"]["dev_accuracy"] for r in chosen]),
        "dev_accuracy_mezo": _mean([r["mezo"]["dev_accuracy"] for r in chosen]),
        "wins": sum(r["policy"]["dev_loss"] < r["mezo"]["dev_loss"] for r in chosen),
        "runs_at_recommended_lr": len(chosen),
    }


def _validation_config(config: MetaTrainConfig, task: str, lr: float, policy: str | None,
                       output: Path) -> FinetuneConfig:
    return FinetuneConfig(model=config.model, task=task, optimizer="zo-sgd", scheme=config.scheme,
                          steps=config.final_steps, lr=lr, eps=config.eps, batch_size=config.batch_size,
                          seed=config.seed, noise=config.noise, train_size=config.train_size,
                          eval_every=config.final_steps, max_length=config.max_length, test_size=50,
                          output=str(output), policy=policy)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


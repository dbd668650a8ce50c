"""Scoring a policy on the validation tasks: while it trains (the held-out gap) and at the end (fine-tunes).

* ``HeldoutGap``: fixed short ZO-SGD runs from the pretrained weights on each validation task (same seeds and
  batches every time), ending in the loss on a fixed slice of the task's dev split; the gap is the policy's
  loss minus sigma = 1's, relative to sigma = 1's (negative: the policy is better). sigma = 1's runs are made
  once. Cheap enough to log during training, and what a sweep is scored on.
* ``final_validation``: real ``l2lzo finetune`` runs of the validation tasks at equal steps, eps and seeds for
  each arm (the trained shape, sigma = 1, and for each sensitivity mask density the mask alone and the shape on
  it), each over its own lr grid (extended while its best lr sits at an edge); each arm is recommended the lr
  where its own runs end with the lowest mean dev loss, so MeZO gets the policy's tuning budget. The best
  non-MeZO arm is what the artifact ships, with MeZO's lr beside its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from l2lzo.finetune import FinetuneConfig, changed_settings, finetune, grouped_loss
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


@dataclass(frozen=True)
class Arm:
    """One way to run ZO-SGD in the final validation: the trained shape or sigma = 1, dense or on a mask."""

    name: str
    shaped: bool  # the trained network sets sigma per block (else sigma = 1)
    mask: Path | None = None  # the sensitivity mask file z lives on (None: dense)
    density: float | None = None

    @property
    def is_mezo(self) -> bool:
        return not self.shaped and self.mask is None


MEZO = Arm("mezo", shaped=False)
POLICY = Arm("policy", shaped=True)


def validation_arms(masks: dict[float, Path]) -> list[Arm]:
    """The shape alone, MeZO, and for each mask density the mask alone and the shape on the mask (the ablation)."""
    arms = [POLICY, MEZO]
    for density, path in sorted(masks.items()):
        arms += [Arm(f"mask {density:g}", False, path, density), Arm(f"policy + mask {density:g}", True, path, density)]
    return arms


def final_validation(config: MetaTrainConfig, policy_file: Path, output: Path,
                     say: Callable[[str], None] = print, masks: dict[float, Path] | None = None) -> dict:
    """Fine-tunes of the validation tasks for every arm (``validation_arms``) over its own lr grid; picks the arm
    and lr to ship.

    Every arm gets the same tuning budget: the same tasks, steps, seeds and grid size. Dense arms start from
    ``config.resolved_lr_grid()``, masked arms from it times ``config.mask_lr_scale`` (z on a small subset moves
    theta less per step); a grid of 3 or more lrs is extended (``l2lzo.lr_grid.extend_at_edges``) while the arm's
    best lr sits at its edge, a shorter one taken as given. Each arm's lr is the one where its runs end with the
    lowest mean dev loss; the shipped arm is the non-MeZO arm with the lowest mean dev loss at its own lr, and
    MeZO's own lr is recorded beside it (``--compare`` runs MeZO there). A run whose results JSON is already in
    ``output`` with the same config is read back, not rerun, so an interrupted validation resumes.
    """
    arms = validation_arms(masks or {})
    runs: dict[tuple[str, str, float], dict] = {}
    grids: dict[str, list[float]] = {}
    extended: dict[str, dict[str, int]] = {}
    for arm in arms:
        scale = config.mask_lr_scale if arm.mask is not None else 1.0
        start = sorted(float(f"{lr * scale:.6g}") for lr in config.resolved_lr_grid())

        def run_lr(lr: float, arm: Arm = arm) -> None:
            for task in config.validation_tasks:
                policy = str(policy_file) if arm.shaped else None
                slug = arm.name.replace(" + ", "+").replace(" ", "")
                run = _validation_config(config, task, lr, policy, arm.mask, output / f"{task}_lr{lr:g}_{slug}.json")
                last = _run_or_load(run)
                runs[(arm.name, task, lr)] = {"arm": arm.name, "task": task, "lr": lr, "dev_loss": last["dev_loss"],
                                              "dev_accuracy": last["dev_accuracy"]}
                say(f"validation {arm.name} {task} lr {lr:g}: dev loss {last['dev_loss']:.4f}")

        for lr in start:
            run_lr(lr)
        grids[arm.name], extended[arm.name] = extend_at_edges(
            start, run_lr, lambda g, arm=arm: [_best_lr(runs, g, arm.name, config.validation_tasks)],
            say=lambda text, arm=arm: say(f"validation {arm.name}: {text}"))
    best = {arm.name: _best_lr(runs, grids[arm.name], arm.name, config.validation_tasks) for arm in arms}
    own = {arm.name: [runs[(arm.name, t, best[arm.name])] for t in config.validation_tasks] for arm in arms}
    summary = {arm.name: {"lr": best[arm.name], "lr_grid": grids[arm.name], "grid_extended": extended[arm.name],
                          "density": arm.density, "shaped": arm.shaped,
                          "dev_loss": _mean([r["dev_loss"] for r in own[arm.name]]),
                          "dev_accuracy": _mean([r["dev_accuracy"] for r in own[arm.name]]),
                          "wins": sum(r["dev_loss"] < m["dev_loss"] for r, m in zip(own[arm.name], own[MEZO.name],
                                                                                   strict=True))}
               for arm in arms}
    chosen = min((a for a in arms if not a.is_mezo), key=lambda a: (summary[a.name]["dev_loss"], a.name))
    at_chosen_lr = [(runs.get((chosen.name, t, best[chosen.name])), runs.get((MEZO.name, t, best[chosen.name])))
                    for t in config.validation_tasks]
    return {
        "chosen_arm": chosen.name,
        "chosen_shaped": chosen.shaped,
        "chosen_density": chosen.density,
        "recommended_lr": best[chosen.name],
        "recommended_lr_sigma1": best[MEZO.name],
        "lr_grid": grids[chosen.name],
        "lr_grid_sigma1": grids[MEZO.name],
        "grid_extended": extended[chosen.name],
        "steps": config.final_steps,
        "validation_tasks": list(config.validation_tasks),
        "arms": summary,
        "runs": [runs[key] for key in sorted(runs)],
        # The headline: the shipped arm and MeZO, each at its own recommended lr.
        "dev_loss_policy": summary[chosen.name]["dev_loss"],
        "dev_loss_mezo": summary[MEZO.name]["dev_loss"],
        "dev_accuracy_policy": summary[chosen.name]["dev_accuracy"],
        "dev_accuracy_mezo": summary[MEZO.name]["dev_accuracy"],
        "wins": summary[chosen.name]["wins"],
        "tasks": len(config.validation_tasks),
        # Both at the shipped arm's lr (the pre-2026-12 headline), where MeZO's grid has that lr.
        "wins_at_policy_lr": sum(p["dev_loss"] < m["dev_loss"] for p, m in at_chosen_lr if m is not None),
    }


def _run_or_load(run: FinetuneConfig) -> dict:
    """The last eval of ``run``: from its results JSON when one with the same config exists, else by running it."""
    path = run.output_path()
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            config = saved.get("config")
            if isinstance(config, dict) and not changed_settings(config, run) and saved.get("evals"):
                return saved["evals"][-1]
        except (OSError, json.JSONDecodeError):
            pass  # a damaged file is rerun (and rewritten)
    return finetune(run, progress=False).evals[-1]


def _best_lr(runs: dict[tuple[str, str, float], dict], grid: Sequence[float], arm: str,
             tasks: Sequence[str]) -> float:
    """The lr whose runs of ``arm`` end with the lowest mean dev loss (the smaller lr on a tie)."""
    return min(grid, key=lambda lr: (_mean([runs[(arm, t, lr)]["dev_loss"] for t in tasks]), lr))


def _validation_config(config: MetaTrainConfig, task: str, lr: float, policy: str | None, mask: Path | None,
                       output: Path) -> FinetuneConfig:
    return FinetuneConfig(model=config.model, task=task, optimizer="zo-sgd", scheme=config.scheme,
                          steps=config.final_steps, lr=lr, eps=config.eps, batch_size=config.batch_size,
                          seed=config.seed, noise=config.noise, train_size=config.train_size,
                          eval_every=config.final_steps, max_length=config.max_length, test_size=50,
                          output=str(output), policy=policy, sparse_mask=str(mask) if mask else None)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


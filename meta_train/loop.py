"""The meta-training loop, top to bottom: episodes, meta-gradient, all-reduce, step, validate, checkpoint.

The same function runs in every Ray Train worker (``meta_train.driver``) and in-process (``LocalRuntime``,
for tests and debugging); a ``Runtime`` is all that differs: the worker's rank, the all-reduce, and where
reports and checkpoints go.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from l2lzo.blocks import discover_blocks
from l2lzo.finetune import grouped_loss
from l2lzo.models import LoadedModel, fingerprint, load_model
from l2lzo.optim import ZOSGD
from l2lzo.perturbation import chunk_seed
from l2lzo.policy.network import LearnedSigma, PerturbationPolicy
from l2lzo.schemes import apply_scheme
from l2lzo.scoring import Scorer
from meta_train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from meta_train.config import MetaTrainConfig
from meta_train.episodes import TaskPool, Trajectory, episode_rng
from meta_train.objective import look_ahead
from meta_train.sensitivity import pool_masks
from meta_train.trajectory_log import TrajectoryLog
from meta_train.validation import HeldoutGap


class Progress(Protocol):
    """A progress bar that can also print a line."""

    def step(self, description: str) -> None:
        """One meta-step done; ``description`` shows beside the bar."""

    def write(self, line: str) -> None:
        """A log line (above the bar)."""

    def close(self) -> None: ...


class Runtime(Protocol):
    """What the loop needs from where it runs."""

    rank: int
    world_size: int

    def progress(self, total: int, done: int) -> Progress:
        """The bar of the meta-steps (rank 0 shows it)."""

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        """Average ``tensors`` in place over the workers."""

    def restore(self, state: TrainingState) -> bool:
        """Load the latest checkpoint into ``state``; False when there is none."""

    def report(self, metrics: dict, state: TrainingState | None) -> None:
        """Publish one meta-step's metrics; with ``state``, also a checkpoint of it (rank 0's counts).

        The "checkpoint at meta-step N" line is logged where the checkpoint is durable, not by the loop: under
        Ray a worker's report returns before the controller has collected it, so a worker killed in between
        loses that checkpoint even though the worker itself had finished writing it.
        """


class TqdmProgress:
    """``Progress`` on a terminal (tqdm); silent when ``enabled`` is False."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.enabled = enabled
        self.bar = tqdm(total=total, initial=done, desc="meta-train", disable=not enabled)

    def step(self, description: str) -> None:
        self.bar.set_postfix_str(description)
        self.bar.update()

    def write(self, line: str) -> None:
        if self.enabled:
            tqdm.write(line)

    def close(self) -> None:
        self.bar.close()


class LocalRuntime:
    """One process, no Ray: checkpoints go to ``folder`` (tests, debugging)."""

    rank, world_size = 0, 1

    def __init__(self, folder: Path, show_progress: bool = True):
        self.folder = Path(folder)
        self.show_progress = show_progress
        self.reports: list[dict] = []

    def progress(self, total: int, done: int) -> Progress:
        return TqdmProgress(total, done, self.show_progress)

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        return None

    def restore(self, state: TrainingState) -> bool:
        if not (self.folder / "state.json").exists():
            return False
        load_checkpoint(state, self.folder)
        return True

    def report(self, metrics: dict, state: TrainingState | None) -> None:
        self.reports.append(metrics)
        if state is not None:
            save_checkpoint(state, self.folder)
            if self.show_progress:
                tqdm.write(f"checkpoint at meta-step {state.meta_step}")


def meta_train_loop(config: MetaTrainConfig, runtime: Runtime, loaded: LoadedModel | None = None
                    ) -> TrainingState:
    """Meta-train a policy for ``config.meta_steps`` steps (continuing from the runtime's last checkpoint).

    ``loaded`` (the base model, before the scheme) is for tests; by default ``config.model`` is loaded.
    """
    config.validate()
    torch.manual_seed(config.seed)
    loaded = loaded or load_model(config.model)
    base_fingerprint = fingerprint(loaded.model)  # the artifact's and the masks': the base model's, before the scheme
    loaded = apply_scheme(loaded, config.scheme)
    scorer = Scorer(loaded, max_length=config.max_length)
    trajectory = Trajectory(discover_blocks(loaded.model))
    pool = TaskPool(config.train_tasks, train_size=config.train_size, seed=config.seed)
    policy = PerturbationPolicy(config.policy)
    state = TrainingState(policy, torch.optim.Adam(policy.parameters(), lr=config.meta_lr),
                          trajectory=TrajectoryLog(runtime.rank))
    bar = runtime.progress(config.meta_steps, state.meta_step)
    say = bar.write
    if runtime.restore(state):
        say(f"resumed at meta-step {state.meta_step} from the last checkpoint")
    if config.mask_densities and not state.masks:  # at the pretrained weights: before any ZO step of a trajectory
        started = time.perf_counter()
        state.masks = pool_masks(config, scorer, pool, rank=runtime.rank, world_size=runtime.world_size,
                                 all_reduce_mean=runtime.all_reduce_mean, fingerprint=base_fingerprint)
        say(f"sensitivity masks (densities {', '.join(f'{d:g}' for d in state.masks)}) from {config.mask_batches} "
            f"batches of {len(pool.names)} tasks in {time.perf_counter() - started:.0f} s")
    heldout_gap = HeldoutGap(config, scorer, trajectory)  # every worker makes its share of the runs
    horizon = config.reset_every * config.inner_steps  # ZO steps per trajectory: the policy's "run length"

    optimizer, sigma, task = None, None, None
    last_gap = next((h["heldout_gap"] for h in reversed(state.history) if "heldout_gap" in h), None)
    while state.meta_step < config.meta_steps:
        step, started = state.meta_step, time.perf_counter()
        trajectory_index, position = divmod(step, config.reset_every)
        if position == 0 or optimizer is None:  # a new trajectory, or a resumed one: pretrained theta, its task
            trajectory.reset()
            task = episode_rng(config.seed, runtime.rank, trajectory_index).choice(pool.names)
            optimizer = ZOSGD(loaded.model, lr=config.resolved_lr(), eps=config.eps, blocks=trajectory.blocks,
                              seed=chunk_seed(config.seed, runtime.rank, trajectory_index), noise=config.noise)
            sigma = LearnedSigma(policy, config.scheme, total_steps=horizon, keep_graph=True)
            optimizer.set_sigma_hook(sigma)
            if position == 0:
                state.trajectory.start(trajectory_index)
            else:  # resumed inside a trajectory: replay its logged steps, theta goes back where it was
                state.trajectory.replay(trajectory_index, optimizer, sigma)
        # One episode: K ZO steps with the policy's sigma, then the loss on a different batch of the task.
        episode = pool.episode(task, episode_rng(config.seed, runtime.rank, 1_000_000 + step),
                               config.inner_steps, config.batch_size, config.heldout_batch_size)
        result = look_ahead(optimizer, sigma, [grouped_loss(scorer, b) for b in episode.batches],
                            grouped_loss(scorer, episode.heldout))
        state.trajectory.record(result.steps, optimizer, sigma)
        # The meta-gradient, averaged over the workers, and one Adam step on the policy.
        state.optimizer.zero_grad(set_to_none=False)
        result.surrogate.backward()
        meta_loss = torch.tensor([result.meta_loss])
        runtime.all_reduce_mean([*(p.grad for p in policy.parameters()), meta_loss])
        grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0))
        state.optimizer.step()
        state.meta_step += 1

        values = torch.tensor(list(sigma.last_sigma.values()))
        record = {"meta_step": state.meta_step, "meta_loss": float(meta_loss), "grad_norm": grad_norm,
                  "task": task, "sigma_min": float(values.min()), "sigma_max": float(values.max()),
                  "seconds": time.perf_counter() - started}
        last = state.meta_step == config.meta_steps
        validated = state.meta_step % config.validate_every == 0 or last
        if validated:
            record.update(heldout_gap(policy, runtime.rank, runtime.world_size, runtime.all_reduce_mean))
            last_gap = record["heldout_gap"]
            record["selected"] = state.consider(last_gap)
            say(f"meta-step {state.meta_step}: held-out gap {last_gap:+.4f} (policy loss vs sigma=1, relative); "
                f"sigma in [{record['sigma_min']:.2f}, {record['sigma_max']:.2f}]")
        elif last_gap is not None:  # every report carries the latest score (what a sweep's scheduler reads)
            record["heldout_gap"] = last_gap
        state.history.append(record)
        # Validation steps are checkpointed too: a sweep keeps the policy its score belongs to.
        checkpoint = state.meta_step % config.checkpoint_every == 0 or validated
        runtime.report(record, state if checkpoint else None)
        bar.step(f"meta-loss {record['meta_loss']:.3f}, {record['seconds']:.1f} s/step, {task}")
    bar.close()
    return state

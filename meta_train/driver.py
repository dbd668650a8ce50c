"""Ray as the distributed engine: Ray Train runs the meta-training workers, Ray Tune the sweeps.

``train``: a ``TorchTrainer`` (gloo on CPU) runs ``meta_train_loop`` in N workers, each with its own episodes
and ``threads`` torch threads (so N workers do not oversubscribe the cores); they all-reduce the policy's
gradients every meta-step. Rank 0 checkpoints every ``checkpoint_every`` meta-steps through Ray Train;
``FailureConfig`` restarts the workers from the last checkpoint when one dies; running again with the same
run name and storage (``--resume RUN``) continues from it. Local Ray by default, a cluster with ``address``.

``sweep``: Ray Tune with ASHA over the meta lr, the look-ahead lr and eps; every trial is a Ray Train run
scored on the held-out gap; the best trial's final checkpoint is kept.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from l2lzo.errors import L2LZOError
from meta_train.checkpoint import TrainingState, load_checkpoint, save_checkpoint
from meta_train.config import MetaTrainConfig
from meta_train.loop import TqdmProgress, meta_train_loop

SWEEP_SPACE = {"meta_lr": (0.003, 0.1), "lr_factor": (0.5, 1.0, 2.0), "eps": (1e-4, 1e-3, 1e-2)}


class RayProgress:
    """``Progress`` from a Ray worker: Ray's tqdm draws the bar on the driver; lines are plain prints."""

    def __init__(self, total: int, done: int):
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        self.bar = ray_tqdm(desc="meta-train", total=total)
        self.bar.update(done)  # a resumed run starts where its checkpoint was

    def step(self, description: str) -> None:
        self.bar.set_description(f"meta-train ({description})")
        self.bar.update()

    def write(self, line: str) -> None:
        print(line, flush=True)

    def close(self) -> None:
        self.bar.close()


class RayRuntime:
    """The loop's runtime inside a Ray Train worker (see ``meta_train.loop.Runtime``)."""

    def __init__(self):
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def progress(self, total: int, done: int):
        return RayProgress(total, done) if self.rank == 0 else TqdmProgress(total, done, enabled=False)

    def all_reduce_mean(self, tensors: Sequence[torch.Tensor]) -> None:
        import torch.distributed as dist

        if self.world_size == 1:
            return
        flat = torch.cat([t.detach().flatten().double() for t in tensors])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def restore(self, state: TrainingState) -> bool:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return False
        with checkpoint.as_directory() as folder:
            load_checkpoint(state, Path(folder))
        return True

    def report(self, metrics: dict, state: TrainingState | None) -> None:
        import ray.train

        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if state is None:
            ray.train.report(scalars)
            return
        # Rank 0 writes the checkpoint, every other worker only its trajectory log: Ray Train merges the workers'
        # folders into one checkpoint.
        with tempfile.TemporaryDirectory(prefix="l2lzo-ckpt-") as tmp:
            folder = Path(tmp) / "checkpoint"
            if self.rank == 0:
                save_checkpoint(state, folder)
            else:
                folder.mkdir()
                state.trajectory.save(folder)
            ray.train.report(scalars, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))


def _worker(loop_config: dict) -> None:
    """One Ray Train worker: its share of the cores, then the loop."""
    # Ray Train logs every report at INFO through a logger named after its file, outside ray.train's own
    # logging config; warnings and errors still show.
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(loop_config["threads"])
    meta_train_loop(MetaTrainConfig.from_json(loop_config["config"]), RayRuntime())


def _init_ray(address: str | None) -> bool:
    """Start (or join) Ray unless it is running; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    env = {k: v for k, v in os.environ.items() if k.startswith(("L2LZO_", "HF_", "XDG_"))}
    # ERROR in every Ray process too: without the dashboard (not installed) Ray Train's placement-group monitor
    # warns every few seconds that the state API is unavailable. The loop's own lines are prints: they show.
    ray.init(address=address, include_dashboard=False, logging_level="ERROR",
             logging_config=ray.LoggingConfig(log_level="ERROR"), runtime_env={"env_vars": env})
    return True


def _checkpoint_log():
    """A Ray Train callback that logs each checkpoint once the controller has registered it (then it survives a
    worker's death; a line from the worker itself could announce one that is then lost)."""
    import ray.train

    class CheckpointLog(ray.train.UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if checkpoint is not None:
                print(f"checkpoint at meta-step {metrics[0]['meta_step']}", flush=True)

    return CheckpointLog()


def _trainer(config: MetaTrainConfig, name: str, storage: Path, callbacks: list | None = None):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = config.threads or max(1, cpus // config.workers)
    return TorchTrainer(
        _worker,
        train_loop_config={"config": config.to_json(), "threads": threads},
        scaling_config=ScalingConfig(num_workers=config.workers, resources_per_worker={"CPU": threads}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=config.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             callbacks=[_checkpoint_log(), *(callbacks or [])],
                             # Ray Train logs every report at INFO; its placement-group monitor warns every few
                             # seconds when the state API (the dashboard's) is absent. The loop logs what matters.
                             logging_config=LoggingConfig(log_level="ERROR")),
    )


def run_name(resume: str | None) -> str:
    """``resume`` (a run name) or a new one from the time."""
    return resume or datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")


def train(config: MetaTrainConfig, name: str) -> TrainingState:
    """Meta-train on Ray Train under run ``name`` (continuing it if it has a checkpoint); the final state."""
    storage = (config.output_path() / "ray").resolve()
    started = _init_ray(config.address)
    try:
        result = _trainer(config, name, storage).fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error is not None:
        raise L2LZOError(f"meta-training run {name} failed: {str(result.error).splitlines()[0]}")
    return _state_from(config, result.checkpoint)


def _state_from(config: MetaTrainConfig, checkpoint) -> TrainingState:
    from l2lzo.policy.network import PerturbationPolicy

    if checkpoint is None:
        raise L2LZOError("meta-training ended without a checkpoint")
    policy = PerturbationPolicy(config.policy)
    state = TrainingState(policy, torch.optim.Adam(policy.parameters(), lr=config.meta_lr))
    with checkpoint.as_directory() as folder:
        return load_checkpoint(state, Path(folder))


def _sweep_trial(params: dict) -> None:
    """One Tune trial: a Ray Train run with these meta-hyperparameters, its results forwarded to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    config = MetaTrainConfig.from_json(params["base"])
    config = replace(config, meta_lr=params["meta_lr"], lr=config.resolved_lr() * params["lr_factor"],
                     eps=params["eps"])
    import ray.tune

    trial = ray.tune.get_context().get_trial_name()
    _trainer(config, trial, Path(params["storage"]), callbacks=[TuneReportCallback()]).fit()


def sweep(config: MetaTrainConfig, samples: int) -> tuple[MetaTrainConfig, TrainingState, list[dict]]:
    """ASHA over ``SWEEP_SPACE``, scored on the held-out gap; the best trial's config, state and all trials."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    storage = (config.output_path() / "sweep").resolve()
    started = _init_ray(config.address)
    try:
        space = {"base": config.to_json(), "storage": str(storage / "trials"),
                 "meta_lr": tune.loguniform(*SWEEP_SPACE["meta_lr"]),
                 "lr_factor": tune.choice(SWEEP_SPACE["lr_factor"]), "eps": tune.choice(SWEEP_SPACE["eps"])}
        scheduler = ASHAScheduler(time_attr="meta_step", max_t=config.meta_steps,
                                  grace_period=min(config.validate_every, config.meta_steps), reduction_factor=2)
        tuner = tune.Tuner(
            # A trial only drives its Ray Train run; the workers hold the CPUs.
            tune.with_resources(_sweep_trial, {"CPU": 0}),
            param_space=space,
            tune_config=tune.TuneConfig(metric="heldout_gap", mode="min", scheduler=scheduler, num_samples=samples,
                                        max_concurrent_trials=max(1, int(ray.cluster_resources().get("CPU", 1))
                                                                  // (config.workers * (config.threads or 1)))),
            run_config=tune.RunConfig(name="sweep", storage_path=str(storage)),
        )
        results = tuner.fit()
        best = results.get_best_result(metric="heldout_gap", mode="min", scope="last")
    finally:
        if started:
            ray.shutdown()
    trials = [{**{k: r.config[k] for k in ("meta_lr", "lr_factor", "eps")},
               "heldout_gap": (r.metrics or {}).get("heldout_gap"), "meta_step": (r.metrics or {}).get("meta_step")}
              for r in results if r.config]
    params = best.config
    chosen = replace(config, meta_lr=params["meta_lr"], lr=config.resolved_lr() * params["lr_factor"],
                     eps=params["eps"])
    # The trial's newest checkpoint (every validation step is one; its last report may have come after).
    rows = best.metrics_dataframe
    saved = rows["checkpoint_path"].dropna() if rows is not None and "checkpoint_path" in rows else []
    if len(saved) == 0:
        raise L2LZOError("the best sweep trial left no checkpoint")
    checkpoint_path = saved.iloc[-1]
    from ray.train import Checkpoint

    local = Path(tempfile.mkdtemp(prefix="l2lzo-best-"))
    try:
        Checkpoint(checkpoint_path).to_directory(str(local))
        state = _state_from(chosen, Checkpoint.from_directory(str(local)))
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return chosen, state, trials

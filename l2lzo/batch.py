"""Batch fine-tuning: one model, many tasks, one optimizer plan resolved once; resumable, optionally on Ray.

Layout of ``output_dir``::

    tasks/<task>.json             one fine-tune's results (written atomically when the task finishes)
    tasks/<task>.best.safetensors its best trainable tensors
    results.json, results.md      the table over all tasks, with the optimizer plan and policy provenance
    dev_accuracy.png              dev accuracy against step, one line per task

With ``save_dir`` (``--save-dir DIR``), each task's best-dev weights go to ``DIR/<task>`` (``l2lzo.export``).

A rerun skips tasks whose results file exists with the same run config (and, with ``save_dir``, whose weights
are in ``DIR/<task>``), so an interrupted batch resumes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from l2lzo.errors import L2LZOError
from l2lzo.export import check_save_target
from l2lzo.files import atomic_write_text, write_json
from l2lzo.finetune import FinetuneConfig, changed_settings, finetune, resolve_run_policy
from l2lzo.plotting import pyplot, save_png
from l2lzo.policy.plan import OptimizerPlan
from l2lzo.policy.source import AUTO


@dataclass
class BatchConfig:
    """A batch: the model, the tasks, and the per-task fine-tune settings shared by all of them."""

    model: str
    tasks: list[str]
    optimizer: str = "zo-sgd"
    scheme: str = "full"
    steps: int | None = None  # lr, eps, steps: None means the policy's recommendation, else the default
    lr: float | None = None  # (FinetuneConfig.plan, the same rule as `l2lzo finetune`)
    eps: float | None = None
    policy: str | None = None  # FILE, MODEL[@VERSION] or auto (l2lzo.policy.source); None: auto with a server
    server: str | None = None
    registry: str | None = None
    output_dir: str | None = None  # default results/batch/<model>_<optimizer>_<scheme>
    ray: bool = False
    save_dir: str | None = None  # each task's best-dev weights go to save_dir/<task stem>
    overwrite: bool = False  # replace non-empty save_dir/<task stem> folders
    finetune: dict = field(default_factory=dict)  # other FinetuneConfig fields: batch_size, seed, train_size, ...

    def output_path(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("results") / "batch" / f"{self.model}_{self.optimizer}_{self.scheme}".replace("/", "-")

    def policy_spec(self) -> str | None:
        """``policy``, else ``auto`` when a server is given (it is there to supply the model's policy)."""
        return self.policy or (AUTO if self.server else None)

    def base_config(self) -> FinetuneConfig:
        """The fine-tune settings every task shares, lr / eps / steps as given (None: not given)."""
        return FinetuneConfig(model=self.model, task=self.tasks[0], optimizer=self.optimizer, scheme=self.scheme,
                              steps=self.steps, lr=self.lr, eps=self.eps, policy=self.policy_spec(),
                              server=self.server, registry=self.registry, **self.finetune)

    def task_config(self, task: str, plan: OptimizerPlan) -> FinetuneConfig:
        """One task's run: the plan's values, and the plan's policy file if it is learned (else sigma = 1)."""
        output = self.output_path() / "tasks" / f"{_task_stem(task)}.json"
        # The resolved file itself: every task runs exactly the policy the plan verified.
        policy = str(plan.policy.path) if plan.policy is not None and plan.policy.is_learned else None
        # Absolute: a Ray worker need not share this process's working directory.
        save = str(Path(self.save_dir).expanduser().absolute() / _task_stem(task)) if self.save_dir else None
        return replace(self.base_config(), task=task, steps=plan.steps, lr=plan.lr, eps=plan.eps,
                       output=str(output), policy=policy, server=None, registry=None, save=save,
                       overwrite=self.overwrite).with_scheme_knobs()

    def validate(self) -> None:
        if not self.tasks:
            raise L2LZOError("--tasks is empty: give a comma-separated list of tasks")
        stems = [_task_stem(t) for t in self.tasks]
        duplicates = sorted({s for s in stems if stems.count(s) > 1})
        if duplicates:
            raise L2LZOError(f"--tasks names a task twice: {', '.join(duplicates)}")
        if self.server:
            from l2lzo.client import check_server_url

            check_server_url(self.server)
        self.base_config().validate()


@dataclass
class TaskOutcome:
    """One task's row in the batch table."""

    task: str
    status: str  # "trained" | "skipped (done)"
    results: dict


def finetune_batch(config: BatchConfig, progress: bool = True, say=print) -> dict:
    """Resolve the policy and the optimizer plan once (as ``l2lzo finetune`` does), fine-tune every task not done
    yet, write the table and the plot."""
    config.validate()
    base = config.base_config()
    plan = base.plan(resolve_run_policy(base))
    say(f"plan: {plan.describe()}")
    out = config.output_path()
    configs = {task: config.task_config(task, plan) for task in config.tasks}
    for cfg in configs.values():
        cfg.validate()
    policy_sha256 = plan.policy.sha256 if plan.policy is not None and plan.policy.is_learned else None
    done = {task: _finished(cfg, policy_sha256) for task, cfg in configs.items()}
    for task, cfg in configs.items():
        if done[task] is not None and cfg.save and not _saved(done[task], cfg.save):
            done[task] = None  # trained, but its weights are not in --save-dir: train it again to save them
    pending = [task for task in config.tasks if done[task] is None]
    for task in pending:  # every folder is checked before any task trains
        if configs[task].save:
            check_save_target(configs[task].save, config.overwrite, flag="--save-dir: task folder")
    for i, task in enumerate(config.tasks, 1):
        if done[task] is not None:
            say(f"[{i}/{len(config.tasks)}] {task}: already done ({configs[task].output}), skipped")
    runner = _run_on_ray if config.ray else _run_here
    trained = runner([configs[t] for t in pending], progress=progress, say=say)
    outcomes = [TaskOutcome(task, "skipped (done)", done[task]) if done[task] is not None
                else TaskOutcome(task, "trained", trained[task]) for task in config.tasks]
    summary = {"model": config.model, "scheme": config.scheme, "plan": plan.summary(),
               "rows": [_row(o) for o in outcomes]}
    write_json(out / "results.json", summary)
    atomic_write_text(out / "results.md", _markdown(summary))
    _plot(outcomes, out / "dev_accuracy.png", title=f"{config.model} · {plan.optimizer} · {config.scheme}")
    say(f"results: {out / 'results.json'}, {out / 'results.md'}, {out / 'dev_accuracy.png'}")
    return summary


def _finished(cfg: FinetuneConfig, policy_sha256: str | None) -> dict | None:
    """The results of an earlier run of exactly this config and policy, if any; a different one is an error.

    The policy is compared by sha256, not by path: a cached file's path stays when a new version replaces it.
    """
    path = cfg.output_path()
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
        previous = results["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise L2LZOError(f"{path} is not a results file ({exc}); move it away to rerun that task") from exc
    changed = changed_settings(previous, cfg, ignore=_NOT_COMPARED)
    if ((results.get("policy") or {}).get("sha256") if cfg.policy else None) != policy_sha256:
        changed.append("policy")
    if changed:
        raise L2LZOError(f"{path} was made with different settings ({', '.join(changed)}): "
                         "use another --output-dir, or delete it to retrain")
    return results


_NOT_COMPARED = ("policy", "save", "overwrite")  # the policy is compared by sha256; where weights go is no setting


def _saved(results: dict, path: str) -> bool:
    """Whether ``results`` say their weights went to ``path`` and that folder still holds them."""
    folder = Path(path)
    return (results.get("saved") or {}).get("path") == str(folder) and folder.is_dir() and any(folder.iterdir())


def _run_here(configs: list[FinetuneConfig], progress: bool, say) -> dict[str, dict]:
    results = {}
    for i, cfg in enumerate(configs, 1):
        say(f"[{i}/{len(configs)}] {cfg.task}: fine-tuning ({cfg.steps} steps)")
        results[cfg.task] = asdict(finetune(cfg, progress=progress))
        say(f"[{i}/{len(configs)}] {cfg.task}: {_headline(results[cfg.task])}")
    return results


def _run_on_ray(configs: list[FinetuneConfig], progress: bool, say) -> dict[str, dict]:
    """Each task is a Ray task with one CPU; a worker's torch uses that many threads (Ray sets OMP_NUM_THREADS)."""
    import ray

    if not configs:
        return {}
    started_here = not ray.is_initialized()
    if started_here:
        # RAY_ADDRESS, when set, joins an existing cluster; otherwise a local one is started.
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=progress,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("L2LZO_", "HF_"))}})
    try:
        remote = ray.remote(num_cpus=1)(_finetune_as_dict)
        pending = {remote.remote(cfg): cfg.task for cfg in configs}
        say(f"ray: {len(pending)} tasks on {int(ray.cluster_resources().get('CPU', 0))} CPUs")
        results = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                results[task] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, L2LZOError):
                    raise L2LZOError(f"task {task}: {cause}") from exc
                raise
            say(f"[{len(results)}/{len(configs)}] {task}: {_headline(results[task])}")
        return results
    finally:
        if started_here:
            ray.shutdown()


def _finetune_as_dict(cfg: FinetuneConfig) -> dict:
    return asdict(finetune(cfg, progress=False))


def _headline(results: dict) -> str:
    before, after = results["initial_test"]["accuracy"], results["final_test"]["accuracy"]
    return f"test accuracy {before:.3f} -> {after:.3f} in {results['wall_seconds']:.0f}s"


def _row(outcome: TaskOutcome) -> dict:
    r = outcome.results
    devs = [e["dev_accuracy"] for e in r["evals"]]
    return {"task": outcome.task, "status": outcome.status, "steps": r["config"]["steps"],
            "lr": r["config"]["lr"], "eps": r["config"]["eps"], "dev_accuracy_start": devs[0],
            "dev_accuracy_best": max(devs), "best_step": r["best_step"],
            "test_accuracy_before": r["initial_test"]["accuracy"], "test_accuracy_after": r["final_test"]["accuracy"],
            "test_loss_before": r["initial_test"]["loss"], "test_loss_after": r["final_test"]["loss"],
            "wall_seconds": r["wall_seconds"], "results": r["config"]["output"],
            "saved": (r.get("saved") or {}).get("path"),
            "evals": [{"step": e["step"], "dev_accuracy": e["dev_accuracy"]} for e in r["evals"]]}


def _markdown(summary: dict) -> str:
    plan = summary["plan"]
    policy = plan["policy"]
    origin = (f"policy `{policy['model']}@{policy['version']}` (sha256 `{policy['sha256'][:12]}`)" if policy
              else "no policy")
    lines = [f"# {summary['model']} · {plan['optimizer']} · {summary['scheme']}", "",
             f"lr {plan['lr']}, eps {plan['eps']}, steps {plan['steps']} "
             f"({', '.join(f'{k} from {v}' for k, v in plan['sources'].items())}); {origin}; "
             f"perturbation {plan['perturbation']}.", "",
             "| task | status | steps | dev acc start -> best (step) | test acc before -> after "
             "| test loss before -> after | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['task']} | {r['status']} | {r['steps']} | {r['dev_accuracy_start']:.3f} -> "
                     f"{r['dev_accuracy_best']:.3f} ({r['best_step']}) | {r['test_accuracy_before']:.3f} -> "
                     f"{r['test_accuracy_after']:.3f} | {r['test_loss_before']:.3f} -> {r['test_loss_after']:.3f} "
                     f"| {r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _plot(outcomes: list[TaskOutcome], path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for o in outcomes:
        evals = o.results["evals"]
        ax.plot([e["step"] for e in evals], [e["dev_accuracy"] for e in evals], marker="o", label=o.task)
    ax.set(xlabel="step", ylabel="dev accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_png(fig, path, dpi=120)


def _task_stem(task: str) -> str:
    return Path(task).stem if task.endswith((".jsonl", ".csv")) else task


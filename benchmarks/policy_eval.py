"""The learned policy against sigma = 1 and a no-learning baseline, on tasks meta-training never touched.

Every run is one ``l2lzo finetune`` (same seeds, data, forwards, eps for all arms); results land in
``--output`` as one JSON per run, so a killed evaluation resumes where it stopped.

1. **recommended lr** -- every task x seed: the policy at its recommended lr vs sigma = 1 at the lr the same
   validation picked for it (``recommended_lr_sigma1``: equal tuning budget), or both at ``--lr``; an artifact
   without a sigma = 1 lr runs both at the policy's, and the report says which rule applied.
   From the same runs, **steps to target**: the first eval step (``--eval-every``, default 25) at which the
   policy's dev loss reaches sigma = 1's final dev loss, over sigma = 1's steps; the median ratio is reported.
2. **own best lr** -- ``--grid-tasks`` x ``--grid-seeds`` seeds x a grid per arm (``--lr-grid``, or with
   ``--own-best`` {0.5, 1, 2} x the arm's recommended lr; grown while the arm's best sits at an edge): the
   policy, sigma = 1 and the static baseline (sigma_b^2 ~ (G_b / d_b)^0.5 from 4 FO batches, bounded and
   normalised like the policy; ``l2lzo.profiling.gradient_profile_sigma``; its grid centres on sigma = 1's lr);
   each arm is scored at the lr with its best mean final dev loss, so a win is not just an lr change. A random
   shape (``random-shape``: log sigma_b uniform over the policy's range, seeded per run, normalised like the
   policy's) is the control for the shape itself. With a policy that carries a sensitivity mask, both controls
   run on that mask and their grids centre on the policy's lr, so they differ from the policy in the shape only.
   ``--grid-arms policy,sigma=1`` leaves the two controls out when they do not fit the time.
3. **transfer** (``--derivative TASK``) -- the base model fine-tuned with FO-Adam on TASK (a task the evaluation
   does not use) is a derivative with the base's fingerprint; the policy vs sigma = 1 from there.

Runs already in ``--output`` are read, not rerun, when made with the same settings (a run with others is
refused). The headline and lr-grid comparisons share ``runs/``, so a run both need is made once; evaluations
of disjoint task lists can run side by side
(``--threads 1`` each), and a last invocation over all tasks writes the report from their results.

Reported (``report.md``, ``summary.json``): the win rate on final dev loss, the mean dev- and test-accuracy
difference (policy - sigma = 1) with a 95% t-interval over task x seed pairs, per-task rows, the lr-grid table,
the transfer table, and the policy's size and cost per step; ``curves.png``: dev loss by step, both arms.

    .venv/bin/python benchmarks/policy_eval.py --model minilm-l6 --policy minilm-l6@1 \\
        --seeds 0,1,2 --steps 300 --lr-grid 2e-5,5e-5,1e-4 --grid-seeds 2 --derivative copa
    (``--tasks`` defaults to the evaluation pool of ``meta_train/config.py``; the reports committed under
    benchmarks/results/policy_eval were measured on the pool of their day, BIG-bench tasks included.)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from l2lzo.blocks import discover_blocks
from l2lzo.files import atomic_write_text, write_json
from l2lzo.finetune import DEFAULT_EPS, FinetuneConfig, finetune, grouped_loss
from l2lzo.lr_grid import extend_at_edges, scaled_grid
from l2lzo.models import load_model
from l2lzo.plotting import save_png, subplots
from l2lzo.policy.artifact import PolicyArtifact
from l2lzo.policy.source import open_policy
from l2lzo.profiling import gradient_profile_sigma
from l2lzo.schemes import apply_scheme
from l2lzo.scoring import Scorer
from l2lzo.tasks import load_task
from meta_train.config import EVALUATION_TASKS

ARMS = ("policy", "sigma=1", "static", "random-shape")
SHAPE_CONTROLS = ("static", "random-shape")


#: Settings a stored run must share with the requested one to be reused (the rest is in its file name).
SETTINGS_THAT_MATTER = ("steps", "eval_every", "dev_size", "test_size", "eps", "batch_size", "train_size", "scheme")


def run_arm(base: FinetuneConfig, arm: str, policy: PolicyArtifact | None, out: Path, model: str | None = None) -> dict:
    """One fine-tune (skipped when its results exist); the numbers the report needs."""
    path = out / f"{Path(base.task).stem}_{arm.replace('=', '')}_lr{base.lr:g}_s{base.seed}.json"
    if path.exists():
        data = json.loads(path.read_text())
        used = (data.get("policy") or {}).get("sha256")
        if arm == "policy" and used != policy.sha256:
            raise SystemExit(f"{path} was made with another policy (sha256 {str(used)[:12]}); use another --output")
        stored = data.get("config", {})
        differ = [k for k in SETTINGS_THAT_MATTER if k in stored and stored[k] != getattr(base, k)]
        if differ:  # the file name holds only task, arm, lr and seed: a run with other settings is not this one
            raise SystemExit(f"{path} was made with other settings ({', '.join(differ)}); use another --output")
        return data["summary"]
    config = replace(base, model=model or base.model, output=str(path),
                     policy=str(policy.path) if arm == "policy" else None)
    if arm in SHAPE_CONTROLS and policy is not None and policy.has_mask:  # the shape controls share its mask
        mask_file = out / f"mask_{policy.sha256[:12]}.safetensors"
        if not mask_file.exists():
            policy.mask().save(mask_file)
        config = replace(config, sparse_mask=str(mask_file))
    hook = None
    if arm == "random-shape":
        blocks = discover_blocks(apply_scheme(load_model(config.model), config.scheme).model)
        hook = _StaticSigma(random_shape(blocks, seed=config.seed))
    if arm == "static":
        loaded = load_model(config.model)
        splits = load_task(config.task, seed=config.seed, train_size=config.train_size)
        scorer = Scorer(loaded, max_length=config.max_length)
        size = config.batch_size
        batches = [[splits.train[(i * size + j) % len(splits.train)] for j in range(size)] for i in range(4)]
        sigma = gradient_profile_sigma(loaded.model, [grouped_loss(scorer, b) for b in batches])
        hook = _StaticSigma(sigma)
    result = finetune(config, progress=False, sigma_hook=hook)
    last = result.evals[-1]
    summary = {"task": config.task, "arm": arm, "lr": config.lr, "seed": config.seed, "model": config.model,
               "dev_loss": last["dev_loss"], "dev_accuracy": last["dev_accuracy"],
               "dev_loss_start": result.evals[0]["dev_loss"], "test_accuracy": result.final_test["accuracy"],
               "test_accuracy_before": result.initial_test["accuracy"],
               "median_step_seconds": result.median_step_seconds,
               "policy_seconds_per_step": result.policy_seconds_per_step,
               "curve": [(e["step"], e["dev_loss"]) for e in result.evals]}
    data = json.loads(path.read_text())
    data["summary"] = summary
    write_json(path, data)
    return summary


def random_shape(blocks, seed: int, max_ratio: float = 4.0) -> dict[str, float]:
    """A random per-block sigma over the learned policy's range (log sigma_b uniform in +-log(max_ratio) / 2, so no
    two blocks differ by more than ``max_ratio``), normalised like the policy's (sum_b d_b sigma_b^2 = sum_b d_b)."""
    import torch

    from l2lzo.policy.network import normalised

    half_range = math.log(max_ratio) / 2
    g = torch.Generator().manual_seed(seed)
    log_sigma = (torch.rand(len(blocks), generator=g, dtype=torch.float64) * 2 - 1) * half_range
    sigma = normalised(torch.exp(log_sigma), torch.tensor([b.numel for b in blocks], dtype=torch.float64))
    return {b.name: float(s) for b, s in zip(blocks, sigma, strict=True)}


class _StaticSigma:
    """A fixed sigma as a hook (the static and random-shape controls; named, so results files say what ran)."""

    def __init__(self, sigma: dict[str, float]):
        self.sigma = sigma

    def __call__(self, info) -> dict[str, float]:
        return self.sigma


# Student's t, 97.5% quantile, for 1..30 degrees of freedom (standard tables); the normal's 1.96 beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


def paired(rows: list[dict], a: str, b: str) -> dict:
    """Win rate of ``a`` over ``b`` on final dev loss, and accuracy differences a - b with 95% intervals."""
    keyed = {(r["task"], r["seed"], r["arm"]): r for r in rows}
    pairs = [(keyed[(t, s, a)], keyed[(t, s, b)]) for (t, s, arm) in keyed if arm == a and (t, s, b) in keyed]
    if not pairs:
        return {}
    dev, dev_ci = interval([x["dev_accuracy"] - y["dev_accuracy"] for x, y in pairs])
    test, test_ci = interval([x["test_accuracy"] - y["test_accuracy"] for x, y in pairs])
    loss, loss_ci = interval([x["dev_loss"] - y["dev_loss"] for x, y in pairs])
    return {"pairs": len(pairs), "win_rate_dev_loss": sum(x["dev_loss"] < y["dev_loss"] for x, y in pairs) / len(pairs),
            "dev_loss_diff": loss, "dev_loss_diff_ci95": loss_ci, "dev_accuracy_diff": dev,
            "dev_accuracy_diff_ci95": dev_ci, "test_accuracy_diff": test, "test_accuracy_diff_ci95": test_ci}


def first_step_at(curve: list, target: float) -> int | None:
    """The first eval step whose dev loss is at or below ``target`` (None: never)."""
    return next((step for step, loss in curve if loss <= target), None)


def steps_to_target(rows: list[dict]) -> dict:
    """Per task x seed: the step at which the policy's dev loss first reaches sigma = 1's final dev loss, over
    sigma = 1's number of steps (below 1: the policy gets there sooner). Pairs never reaching it count as misses
    and enter the median as infinity."""
    keyed = {(r["task"], r["seed"], r["arm"]): r for r in rows}
    ratios = []
    for (task, seed, arm), policy in sorted(keyed.items()):
        mezo = keyed.get((task, seed, "sigma=1"))
        if arm != "policy" or mezo is None:
            continue
        final_step, target = mezo["curve"][-1]
        step = first_step_at(policy["curve"], target)
        ratios.append(math.inf if step is None else step / final_step)
    if not ratios:
        return {}
    median = statistics.median(ratios)
    return {"pairs": len(ratios), "median_ratio": None if median == math.inf else median,
            "reached": sum(r < math.inf for r in ratios), "ratios": [None if r == math.inf else r for r in ratios]}


def headline_lrs(flag: float | None, artifact: PolicyArtifact) -> tuple[float, dict[str, float], str]:
    """The lr of each arm of the headline comparison, and the rule that chose them (see the module docstring).
    The first value is the policy's lr, the default of every other comparison's runs."""
    policy_lr = flag or artifact.recommended()["lr"]
    if flag is not None:
        return policy_lr, {"policy": flag, "sigma=1": flag}, "both at --lr"
    sigma1 = artifact.sigma1_lr()
    if sigma1 is not None:
        return policy_lr, {"policy": policy_lr, "sigma=1": sigma1}, "each arm at its own validated lr"
    return policy_lr, {"policy": policy_lr, "sigma=1": policy_lr}, (
        "both at the policy's lr: this artifact records no validated lr for sigma = 1")


def _grid_centre(arm: str, artifact: PolicyArtifact) -> str:
    """Whose recommended lr an arm's {0.5, 1, 2} grid centres on: a shape control on the policy's mask takes the
    policy's (a mask moves theta less per step), on a dense z sigma = 1's."""
    if arm in SHAPE_CONTROLS:
        return "policy" if artifact.has_mask else "sigma=1"
    return arm


def make_derivative(model: str, task: str, out: Path, steps: int = 60) -> Path:
    """``model`` fine-tuned with FO-Adam on ``task``, saved as a model folder (same architecture fingerprint)."""
    folder = out / f"derivative_{Path(task).stem}"
    if (folder / "config.json").exists():
        return folder
    loaded = load_model(model)
    config = FinetuneConfig(model=model, task=task, optimizer="fo-adam", steps=steps, eval_every=steps,
                            output=str(out / f"derivative_{Path(task).stem}.json"))
    finetune(config, loaded=loaded, progress=False)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--scheme", default="full")
    parser.add_argument("--policy", default=None, help="FILE or MODEL[@VERSION] (local registry); required unless "
                                                       "--baseline-only")
    parser.add_argument("--registry", default=None)
    parser.add_argument("--tasks", default=",".join(EVALUATION_TASKS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=25,
                        help="dev evaluations (the curves, and the steps-to-target comparison, are read at these)")
    parser.add_argument("--lr", type=float, default=None,
                        help="one lr for both arms of the headline comparison (default: each arm's recommended)")
    parser.add_argument("--lr-grid", default=None,
                        help="comma-separated lrs for the own-best-lr comparison (every arm starts from it)")
    parser.add_argument("--own-best", action="store_true",
                        help="the own-best-lr comparison on {0.5, 1, 2} x each arm's recommended lr (without "
                             "--lr-grid); either way each arm's grid grows while its best lr sits at an edge")
    parser.add_argument("--grid-tasks", default=None, help="tasks of the lr-grid comparison (default: first 3)")
    parser.add_argument("--grid-seeds", type=int, default=2)
    parser.add_argument("--grid-arms", default=",".join(ARMS),
                        help=f"arms of the lr-grid comparison (default: all of {', '.join(ARMS)}); policy and "
                             "sigma=1 alone when the shape controls do not fit the time")
    parser.add_argument("--derivative", default=None, help="task to make a derivative on (transfer check)")
    parser.add_argument("--derivative-tasks", default=None, help="tasks of the transfer check (default: first 3)")
    parser.add_argument("--derivative-seeds", type=int, default=2)
    parser.add_argument("--dev-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--output", default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (run several evaluations on disjoint --tasks side by side with 1 each; a "
                             "last run over all tasks then only reads their results and writes the report)")
    parser.add_argument("--baseline-only", action="store_true",
                        help="run only the sigma = 1 arms of the equal-lr comparison (needs --lr, not --policy), so "
                             "the baseline can run while the policy is still meta-training; a later run reads them")
    args = parser.parse_args()
    if args.baseline_only and args.lr is None:
        parser.error("--baseline-only needs --lr (the lr the sigma = 1 arms use)")
    if not args.baseline_only and args.policy is None:
        parser.error("--policy is required (or --baseline-only)")
    grid_arms = [a for a in args.grid_arms.split(",") if a]
    if set(grid_arms) - set(ARMS) or not {"policy", "sigma=1"} <= set(grid_arms):
        parser.error(f"--grid-arms takes {', '.join(ARMS)}, policy and sigma=1 included")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    artifact = None if args.baseline_only else open_policy(args.policy, registry_root=args.registry)
    if args.baseline_only:
        lr, arm_lr, lr_rule = args.lr, {"sigma=1": args.lr}, "both at --lr"
    else:
        lr, arm_lr, lr_rule = headline_lrs(args.lr, artifact)
    tasks = [t for t in args.tasks.split(",") if t]
    grid_tasks = [t for t in (args.grid_tasks or ",".join(tasks[:3])).split(",") if t]
    derivative_tasks = [t for t in (args.derivative_tasks or ",".join(tasks[:3])).split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.output or f"benchmarks/results/policy_eval/{args.model}_{args.scheme}".replace("/", "-"))
    out.mkdir(parents=True, exist_ok=True)
    # eps pinned: every arm runs at the same eps (the policy arm would otherwise take the policy's recommendation).
    base = FinetuneConfig(model=args.model, scheme=args.scheme, steps=args.steps, eval_every=args.eval_every,
                          dev_size=args.dev_size, test_size=args.test_size, lr=lr, eps=DEFAULT_EPS)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.baseline_only:
        for task in tasks:
            for seed in seeds:
                row = run_arm(replace(base, task=task, seed=seed), "sigma=1", None, out / "runs")
                say(f"sigma=1 at lr {lr:g}: {task} seed {seed}: dev loss {row['dev_loss']:.4f}")
        return

    headline = []
    for task in tasks:
        for seed in seeds:
            for arm in ("policy", "sigma=1"):
                headline.append(run_arm(replace(base, task=task, seed=seed, lr=arm_lr[arm]), arm, artifact,
                                     out / "runs"))
            say(f"recommended lrs: {task} seed {seed}: dev loss policy {headline[-2]['dev_loss']:.4f} "
                f"vs sigma=1 {headline[-1]['dev_loss']:.4f}")
    summary = {"model": args.model, "scheme": args.scheme, "policy": artifact.summary(), "lr": arm_lr,
               "lr_rule": lr_rule, "steps": args.steps, "tasks": tasks, "seeds": seeds,
               "recommended_lr": paired(headline, "policy", "sigma=1"), "recommended_lr_rows": headline,
               "steps_to_target": steps_to_target(headline)}

    if args.lr_grid or args.own_best:
        rows: list[dict] = []
        grids, best = {}, {}
        for arm in grid_arms:
            start = ([float(x) for x in args.lr_grid.split(",")] if args.lr_grid
                     else scaled_grid(arm_lr[_grid_centre(arm, artifact)]))

            def run_lr(value: float, _arm: str = arm) -> None:
                for task in grid_tasks:
                    for seed in seeds[:args.grid_seeds]:
                        rows.append(run_arm(replace(base, task=task, seed=seed, lr=value), _arm, artifact,
                                            out / "runs"))
                say(f"lr grid: {_arm} at lr {value:g} done")

            def mean_loss(value: float, _arm: str = arm) -> float:
                return statistics.fmean(r["dev_loss"] for r in rows if r["arm"] == _arm and r["lr"] == value)

            for value in start:
                run_lr(value)
            grids[arm], _ = extend_at_edges(start, run_lr, lambda g, _m=mean_loss: [min(g, key=_m)], say=say)
            best[arm] = min(grids[arm], key=mean_loss)
        at_best = [r for r in rows if r["lr"] == best[r["arm"]]]
        summary["own_best_lr"] = {"grid": grids, "best_lr": best,
                                  "policy_vs_sigma1": paired(at_best, "policy", "sigma=1"),
                                  "policy_vs_static": paired(at_best, "policy", "static"),
                                  "static_vs_sigma1": paired(at_best, "static", "sigma=1"),
                                  "policy_vs_random_shape": paired(at_best, "policy", "random-shape"), "rows": rows}

    if args.derivative:
        folder = make_derivative(args.model, args.derivative, out)
        rows = []
        for task in derivative_tasks:
            for seed in seeds[:args.derivative_seeds]:
                for arm in ("policy", "sigma=1"):
                    rows.append(run_arm(replace(base, task=task, seed=seed), arm, artifact, out / "derivative",
                                        model=str(folder)))
        summary["transfer"] = {"derivative_of": args.model, "fine_tuned_on": args.derivative,
                               "policy_vs_sigma1": paired(rows, "policy", "sigma=1"), "rows": rows}

    training = json.loads(artifact.metadata["training_config"])
    steps_cost = [r["policy_seconds_per_step"] / r["median_step_seconds"] for r in headline if r["arm"] == "policy"]
    summary["policy_size"] = {"numbers": training.get("policy_numbers"), "bytes": training.get("policy_bytes"),
                              "file_bytes": artifact.path.stat().st_size,
                              "cost_fraction_of_step": statistics.median(steps_cost) if steps_cost else None}
    write_json(out / "summary.json", summary)
    plot_curves(headline, out / "curves.png", f"{args.model} ({args.scheme}), lr policy {arm_lr['policy']:g}, "
                f"sigma = 1 {arm_lr['sigma=1']:g}: learned policy vs sigma = 1")
    text = report(summary, " ".join(sys.argv))
    atomic_write_text(out / "report.md", text)
    print(text)


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    """One panel per task: dev loss by step for each arm, mean over seeds (thin lines: the seeds)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axs = subplots(len(tasks), width=5.0, height=3.4)
    for ax, task in zip(axs, tasks, strict=True):
        for colour, arm in zip(("C0", "C1"), ("policy", "sigma=1"), strict=True):
            curves = [r["curve"] for r in rows if r["task"] == task and r["arm"] == arm]
            if not curves:
                continue
            for curve in curves:
                ax.plot(*zip(*curve, strict=True), color=colour, lw=0.6, alpha=0.35)
            steps = [s for s, _ in curves[0]]
            ax.plot(steps, [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))], color=colour,
                    marker="o", markersize=3, label=f"{arm} (mean of {len(curves)})")
        ax.set(title=task, xlabel="step", ylabel="dev loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    save_png(fig, path)


def _ratio(value: float | None) -> str:
    return "not reached (most pairs never got there)" if value is None else f"{value:.2f}x"


def _fmt(p: dict) -> str:
    if not p:
        return "n/a"
    return (f"win rate {p['win_rate_dev_loss']:.0%} ({p['pairs']} pairs); dev loss {p['dev_loss_diff']:+.4f} "
            f"+- {p['dev_loss_diff_ci95']:.4f}; dev acc {p['dev_accuracy_diff']:+.3f} "
            f"+- {p['dev_accuracy_diff_ci95']:.3f}; "
            f"test acc {p['test_accuracy_diff']:+.3f} +- {p['test_accuracy_diff_ci95']:.3f}")


def report(summary: dict, command: str) -> str:
    """Markdown for ``summary``."""
    lines = [f"# Learned policy vs sigma = 1: {summary['model']} ({summary['scheme']})", "",
             f"Command: `{command}`", "",
             f"Policy `{summary['policy']['model']}@{summary['policy']['version']}` (sha256 "
             f"`{summary['policy']['sha256'][:12]}`), {summary['policy_size']['numbers']} numbers, "
             f"{summary['policy_size']['file_bytes']} bytes on disk; its cost per step: "
             f"{(summary['policy_size']['cost_fraction_of_step'] or 0):.4%} of a step. "
             f"{summary['steps']} steps per run; differences are policy - other, 95% t-intervals over task x seed.", "",
             f"- **Recommended lr vs recommended lr** (policy {summary['lr']['policy']:g}, sigma=1 "
             f"{summary['lr']['sigma=1']:g}: {summary['lr_rule']}): {_fmt(summary['recommended_lr'])}"]
    reach = summary.get("steps_to_target")
    if reach:
        lines.append(f"- **Steps to sigma = 1's final dev loss** (policy's first eval step at or below it, over "
                     f"sigma = 1's steps): median {_ratio(reach['median_ratio'])}; reached in {reach['reached']} of "
                     f"{reach['pairs']} pairs")
    if "own_best_lr" in summary:
        grid = summary["own_best_lr"]
        lines += [f"- **Own best lr** (grids {grid['grid']}, best: {grid['best_lr']}): policy vs sigma=1: "
                  f"{_fmt(grid['policy_vs_sigma1'])}",
                  f"  - policy vs static gradient profile: {_fmt(grid['policy_vs_static'])}",
                  f"  - static vs sigma=1: {_fmt(grid['static_vs_sigma1'])}"]
        if "policy_vs_random_shape" in grid:
            lines.append(f"  - policy vs a random shape of its range: {_fmt(grid['policy_vs_random_shape'])}")
    if "transfer" in summary:
        t = summary["transfer"]
        lines.append(f"- **Transfer** (derivative fine-tuned on {t['fine_tuned_on']}): {_fmt(t['policy_vs_sigma1'])}")
    lines += ["", "| task | seed | arm | lr | dev loss start -> end | dev acc | test acc before -> after |",
              "|---|---|---|---|---|---|---|"]
    for r in summary["recommended_lr_rows"]:
        lines.append(f"| {r['task']} | {r['seed']} | {r['arm']} | {r['lr']:g} | {r['dev_loss_start']:.4f} -> "
                     f"{r['dev_loss']:.4f} | {r['dev_accuracy']:.3f} | {r['test_accuracy_before']:.3f} -> "
                     f"{r['test_accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

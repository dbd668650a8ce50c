"""A learned policy against sigma = 1 (MeZO) on one task: two fine-tunes with the same seeds, data, forwards
and eps, each at the lr its own validation picked. ``l2lzo finetune --policy P --compare``.

The artifact records both lrs (``recommended_lr`` for the policy, ``recommended_lr_sigma1`` for MeZO, chosen by
the same validation runs), so MeZO gets the policy's tuning budget. With ``--lr`` both arms run at that lr; an
artifact made before MeZO's lr was recorded runs both at the policy's, and the table says which rule applied.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig, FinetuneResult, finetune


@dataclass
class Comparison:
    """The two arms' results and where each arm's lr came from."""

    results: dict[str, FinetuneResult]
    lr_sources: dict[str, str]


def compare(config: FinetuneConfig, progress: bool = True, say=None) -> Comparison:
    """Fine-tune with ``config.policy``, then with sigma = 1 at its own validated lr (see the module docstring),
    with the eps and steps the policy arm resolved. ``say`` gets each arm's plan (``finetune``)."""
    if not config.policy:
        raise L2LZOError("--compare needs --policy: it runs the policy and sigma = 1 side by side")
    stem = config.output_path().with_suffix("")
    learned = finetune(replace(config, output=f"{stem}.policy.json"), progress=progress, say=say)
    if learned.policy is None:
        raise L2LZOError("no learned policy was found for this model, so there is nothing to compare")
    sigma1_lr = learned.policy.get("recommended_lr_sigma1")
    if config.lr is not None:
        lr, sources = config.lr, {"policy": "--lr", "sigma=1": "--lr (both arms)"}
    elif sigma1_lr is not None:
        lr, sources = sigma1_lr, {"policy": "policy's validation", "sigma=1": "its own validation (same runs)"}
    else:
        lr = learned.config["lr"]
        sources = {"policy": "policy's validation",
                   "sigma=1": "the policy's lr (this artifact records no validated lr for sigma = 1)"}
    mezo = finetune(replace(config, policy=None, lr=lr, eps=learned.config["eps"], steps=learned.config["steps"],
                            output=f"{stem}.sigma1.json"), progress=progress, say=say)
    return Comparison({"policy": learned, "sigma=1": mezo}, sources)


def comparison_table(comparison: Comparison) -> str:
    """A markdown table of the arms: lr and its source, dev loss and accuracy at the end and at best, test
    accuracy, step time."""
    results = comparison.results
    lines = ["| arm | lr (from) | dev loss start -> end | dev acc start -> best | test acc before -> after | step s |",
             "|---|---|---|---|---|---|"]
    for arm, r in results.items():
        first, last = r.evals[0], r.evals[-1]
        best = max(e["dev_accuracy"] for e in r.evals)
        lines.append(f"| {arm} | {r.config['lr']:g} ({comparison.lr_sources[arm]}) "
                     f"| {first['dev_loss']:.4f} -> {last['dev_loss']:.4f} "
                     f"| {first['dev_accuracy']:.3f} -> {best:.3f} | {r.initial_test['accuracy']:.3f} -> "
                     f"{r.final_test['accuracy']:.3f} | {r.median_step_seconds:.3f} |")
    policy = results["policy"].policy
    lines.append(f"\npolicy {policy['model']}@{policy['version']} (sha256 {policy['sha256'][:12]}); results: "
                 f"{', '.join(r.config['output'] for r in results.values())}")
    if policy.get("mask") and not (results["policy"].config["sparse_mask"] or results["policy"].config["sparsity"]):
        mask = policy["mask"]
        lines.append(f"the policy arm perturbs only its mask's coordinates (density {mask['density']:g}, "
                     f"{mask['scope']}, from {len(mask['tasks'])} tasks); sigma = 1 perturbs all of them")
    return "\n".join(lines)

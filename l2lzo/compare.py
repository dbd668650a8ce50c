"""A learned policy against sigma = 1 (MeZO) on one task: two fine-tunes with the same seeds, data, forwards,
lr and eps, differing only in the perturbation's shape. ``l2lzo finetune --policy P --compare``."""

from __future__ import annotations

from dataclasses import replace

from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig, FinetuneResult, finetune


def compare(config: FinetuneConfig, progress: bool = True) -> dict[str, FinetuneResult]:
    """Fine-tune with ``config.policy``, then with sigma = 1 at the lr the policy run used."""
    if not config.policy:
        raise L2LZOError("--compare needs --policy: it runs the policy and sigma = 1 side by side")
    stem = config.output_path().with_suffix("")
    learned = finetune(replace(config, output=f"{stem}.policy.json"), progress=progress)
    if learned.policy is None:
        raise L2LZOError("no learned policy was found for this model, so there is nothing to compare")
    mezo = finetune(replace(config, policy=None, lr=learned.config["lr"], output=f"{stem}.sigma1.json"),
                    progress=progress)
    return {"policy": learned, "sigma=1": mezo}


def comparison_table(results: dict[str, FinetuneResult]) -> str:
    """A markdown table of the arms: dev loss and accuracy at the end and at best, test accuracy, step time."""
    lines = ["| arm | lr | dev loss start -> end | dev acc start -> best | test acc before -> after | step s |",
             "|---|---|---|---|---|---|"]
    for arm, r in results.items():
        first, last = r.evals[0], r.evals[-1]
        best = max(e["dev_accuracy"] for e in r.evals)
        lines.append(f"| {arm} | {r.config['lr']:g} | {first['dev_loss']:.4f} -> {last['dev_loss']:.4f} "
                     f"| {first['dev_accuracy']:.3f} -> {best:.3f} | {r.initial_test['accuracy']:.3f} -> "
                     f"{r.final_test['accuracy']:.3f} | {r.median_step_seconds:.3f} |")
    policy = results["policy"].policy
    lines.append(f"\npolicy {policy['model']}@{policy['version']} (sha256 {policy['sha256'][:12]}); results: "
                 f"{', '.join(r.config['output'] for r in results.values())}")
    return "\n".join(lines)

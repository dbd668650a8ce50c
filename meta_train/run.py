"""A whole meta-training run: Ray (train or sweep), curves, held-out validation, artifact, registry."""

from __future__ import annotations

from collections.abc import Callable

from l2lzo.files import atomic_write_bytes, write_json
from l2lzo.models import fingerprint, load_model
from l2lzo.policy.network import PerturbationPolicy
from l2lzo.tasks import require_prepared
from meta_train import driver
from meta_train.artifact import build_policy_artifact, publish
from meta_train.config import MetaTrainConfig
from meta_train.plots import plot_history
from meta_train.validation import final_validation


def run(config: MetaTrainConfig, *, resume: str | None = None, sweep_samples: int = 0,
        say: Callable[[str], None] = print) -> dict:
    """Meta-train (or sweep), validate on the held-out pool, write and publish the artifact; a summary."""
    config.validate()
    require_prepared([*config.train_tasks, *config.validation_tasks], "meta-training")
    out = config.output_path()
    out.mkdir(parents=True, exist_ok=True)
    sweep_trials = None
    if sweep_samples:
        say(f"sweep: {sweep_samples} trials (ASHA on the held-out gap) in {out / 'sweep'}")
        config, state, sweep_trials = driver.sweep(config, sweep_samples)
        say(f"best trial: meta lr {config.meta_lr:.4g}, lr {config.resolved_lr():.3g}, eps {config.eps:g}")
    else:
        name = driver.run_name(resume)
        say(f"run {name} in {out / 'ray'} ({config.workers} worker(s)); continue it with --resume {name}")
        state = driver.train(config, name)
    write_json(out / "history.json", state.history)
    plot_history(state.history, out / "meta_training.png", f"{config.model} ({config.scheme}): meta-training")

    # Model selection: the validated weights with the best held-out gap; sigma = 1 if none beat it.
    policy = state.best_policy()
    if state.best_weights is None:
        say("no validated policy beat sigma = 1 on the held-out gap: the artifact is the untrained policy "
            "(sigma = 1 exactly); see the curves")
    else:
        say(f"selected the policy of meta-step {state.best_step} (held-out gap {state.best_gap:+.4f})")
    base_fingerprint = fingerprint(load_model(config.model).model)  # the base model's, before the scheme
    draft = build_policy_artifact(policy, config, fingerprint=base_fingerprint,
                                  recommended_lr=config.resolved_lr(), metrics={})
    atomic_write_bytes(out / "policy.draft.safetensors", draft)
    say(f"held-out validation on {', '.join(config.validation_tasks)} ({config.final_steps} steps, "
        f"lr grid {config.resolved_lr_grid()})")
    mask_files = {density: mask.save(out / f"mask_d{density:g}.safetensors") for density, mask in state.masks.items()}
    validation = final_validation(config, out / "policy.draft.safetensors", out / "validation", say=say,
                                  masks=mask_files)
    # What ships is the arm the validation chose: the shape (or sigma = 1) on the chosen mask (or dense).
    if not validation["chosen_shaped"]:
        policy = PerturbationPolicy(config.policy)  # untrained: sigma = 1 exactly
    mask = state.masks.get(validation["chosen_density"]) if validation["chosen_density"] is not None else None
    say(f"validation chose {validation['chosen_arm']} at lr {validation['recommended_lr']:g}")
    gaps = [h["heldout_gap"] for h in state.history if "policy_loss" in h]
    metrics = {"validation": validation, "heldout_gap_curve": gaps, "meta_steps": state.meta_step,
               "selected_meta_step": state.best_step, "selected_heldout_gap": state.best_gap, "sweep": sweep_trials}
    data = build_policy_artifact(policy, config, fingerprint=base_fingerprint,
                                 recommended_lr=validation["recommended_lr"], metrics=metrics,
                                 history_tail=state.history[-5:], sigma1_lr=validation["recommended_lr_sigma1"],
                                 mask=mask)
    atomic_write_bytes(out / "policy.safetensors", data)
    (out / "policy.draft.safetensors").unlink(missing_ok=True)
    summary = {"artifact": str(out / "policy.safetensors"), "bytes": len(data),
               "policy_numbers": policy.numbers, "recommended_lr": validation["recommended_lr"],
               "recommended_lr_sigma1": validation["recommended_lr_sigma1"], "chosen_arm": validation["chosen_arm"],
               "selected_meta_step": state.best_step, "selected_heldout_gap": state.best_gap,
               "validation": validation, "published": publish(data, config) if config.push else None}
    write_json(out / "summary.json", summary)
    say(f"policy: {policy.numbers} numbers, {len(data)} bytes -> {summary['artifact']}"
        + (f", pushed as {summary['published']}" if summary["published"] else ""))
    say(f"validation, each arm at its own lr: dev loss {validation['chosen_arm']} {validation['dev_loss_policy']:.4f} "
        f"(lr {validation['recommended_lr']:g}) vs sigma=1 {validation['dev_loss_mezo']:.4f} (lr "
        f"{validation['recommended_lr_sigma1']:g}); it wins {validation['wins']}/{validation['tasks']} tasks")
    return summary

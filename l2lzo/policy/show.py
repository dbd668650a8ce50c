"""``l2lzo policy show``: what a learned policy is, and the sigma it gives each block of its base model.

Prints the artifact's provenance (base model, fingerprint, size, recommended lr / eps / steps, task pools,
validation) and the sigma per role and layer at the start of a run; writes a PNG heatmap of sigma by
layer x role, so a user can see the shape the policy puts on the model.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from l2lzo.blocks import ROLES, Block, discover_blocks, group_key
from l2lzo.errors import L2LZOError
from l2lzo.models import fingerprint, load_model
from l2lzo.plotting import pyplot, save_png
from l2lzo.policy.artifact import PolicyArtifact
from l2lzo.policy.features import STEP_FEATURES, block_features
from l2lzo.schemes import apply_scheme


def sigma_table(artifact: PolicyArtifact, model: str | None = None) -> tuple[str, list[tuple[Block, float]]]:
    """The base model's blocks under the policy at the start of a run: (scheme, [(block, sigma)])."""
    network = artifact.network()
    if network is None:
        raise L2LZOError(f"policy {artifact.label()} holds hyperparameters only: sigma = 1 everywhere")
    training = json.loads(artifact.metadata.get("training_config", "{}"))
    scheme = training.get("scheme", "full")
    loaded = load_model(model or training.get("model") or artifact.metadata["base_model"])
    artifact.check_fingerprint(fingerprint(loaded.model))
    blocks = discover_blocks(apply_scheme(loaded, scheme).model)
    with torch.no_grad():
        sigma = network(block_features(blocks, scheme), torch.zeros(len(STEP_FEATURES)))
    return scheme, [(b, float(s)) for b, s in zip(blocks, sigma, strict=True)]


def describe(artifact: PolicyArtifact, rows: list[tuple[Block, float]], scheme: str) -> str:
    """Provenance and a per-role summary of sigma, as text."""
    meta = artifact.metadata
    training = json.loads(meta.get("training_config", "{}"))
    metrics = json.loads(meta.get("metrics", "{}"))
    validation = metrics.get("validation") or {}
    lines = [
        f"policy {artifact.label()}",
        f"  base model {meta.get('base_model')} (fingerprint {str(artifact.fingerprint)[:16]}...), scheme {scheme}",
        f"  {training.get('policy_numbers', '?')} numbers ({training.get('policy_bytes', '?')} bytes); created "
        f"{meta.get('created_at')}",
        f"  recommended lr {meta.get('recommended_lr')}, eps {meta.get('recommended_eps')}, steps "
        f"{meta.get('recommended_steps')}; sigma = 1's own validated lr "
        f"{meta.get('recommended_lr_sigma1', 'not recorded (an artifact from before equal-budget validation)')}",
        f"  meta-trained on {len(training.get('train_tasks', []))} tasks for {training.get('meta_steps')} meta-steps "
        f"x {training.get('workers')} worker(s); validation tasks {', '.join(training.get('validation_tasks', []))}",
    ]
    if "recommended_lr_sigma1" in validation:
        lines.append(f"  validation, each arm at its own lr: dev loss policy {validation['dev_loss_policy']:.4f} vs "
                     f"sigma=1 {validation['dev_loss_mezo']:.4f}, wins {validation['wins']}/{validation['tasks']}")
    elif "dev_loss_policy" in validation:  # older artifacts: both arms at the policy's lr
        lines.append(f"  validation, both at lr {validation.get('recommended_lr')}: dev loss policy "
                     f"{validation.get('dev_loss_policy'):.4f} vs sigma=1 {validation.get('dev_loss_mezo'):.4f}, "
                     f"wins {validation.get('wins')}/{validation.get('runs_at_recommended_lr')}")
    if artifact.has_mask:
        mask = artifact.summary()["mask"] or {}
        chosen = f"; validation chose {validation['chosen_arm']}" if "chosen_arm" in validation else ""
        lines.append(f"  sensitivity mask: density {mask.get('density')}, {mask.get('scope')} scope, from "
                     f"{len(mask.get('tasks') or [])} tasks (ZO perturbs only these coordinates){chosen}")
    by_role: dict[str, list[float]] = defaultdict(list)
    for block, s in rows:
        by_role[block.role].append(s)
    lines.append("  sigma at the start of a run, by role: " + ", ".join(
        f"{role} {min(v):.2f}..{max(v):.2f}" if len(v) > 1 else f"{role} {v[0]:.2f}"
        for role, v in sorted(by_role.items(), key=lambda kv: ROLES.index(kv[0]))))
    return "\n".join(lines)


def plot_sigma(rows: list[tuple[Block, float]], path: Path, title: str) -> None:
    """Heatmap of sigma: roles down, layers across (blocks outside the layers in their own column)."""
    plt = pyplot()

    columns: list[str] = []
    cells: dict[tuple[str, str], list[float]] = defaultdict(list)
    for block, s in rows:
        column = group_key(block, "layer")
        if column not in columns:
            columns.append(column)
        cells[(block.role, column)].append(s)
    roles = [r for r in ROLES if any((r, c) in cells for c in columns)]
    grid = torch.full((len(roles), len(columns)), float("nan"))
    for (role, column), values in cells.items():
        grid[roles.index(role), columns.index(column)] = sum(values) / len(values)
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(columns) + 2), 0.45 * len(roles) + 1.8))
    image = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(columns)), [c.removeprefix("layer.") for c in columns], rotation=90, fontsize=7)
    ax.set_yticks(range(len(roles)), roles)
    ax.set(xlabel="layer (or non-layer group)", title=title)
    fig.colorbar(image, ax=ax, label="sigma")
    save_png(fig, path)

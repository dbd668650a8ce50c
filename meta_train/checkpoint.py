"""Meta-training checkpoints: a folder of safetensors and JSON (no pickle), written atomically.

``policy.safetensors``   the policy's weights
``best.safetensors``     the weights with the best held-out gap so far (absent while sigma = 1 is the best)
``optimizer.safetensors``  the meta-optimizer's (Adam's) tensors; its scalars go in state.json
``state.json``           the next meta-step, the optimizer's param groups, the best gap and its meta-step, and the
                         metrics history so far
``mask-{i}.safetensors``  the sensitivity masks (``meta_train.sensitivity``), one per density, when the run has
                         them: every checkpoint carries them, so a resumed run never rescores
``trajectory-rank{R}.json``  worker R's ZO steps since its trajectory's reset (``meta_train.trajectory_log``): a
                         resumed worker replays them, so its theta is where the interrupted one left it
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from l2lzo.policy.network import PerturbationPolicy
from l2lzo.policy.sensitivity import SensitivityMask
from meta_train.trajectory_log import TrajectoryLog


@dataclass
class TrainingState:
    """Where a run is: its policy, meta-optimizer, next meta-step and history."""

    policy: PerturbationPolicy
    optimizer: torch.optim.Optimizer
    meta_step: int = 0
    history: list[dict] = field(default_factory=list)
    # Model selection on the validation tasks: sigma = 1 (an untrained policy, meta-step 0) scores a gap of 0,
    # and only a policy that beats it replaces it.
    best_gap: float = 0.0
    best_step: int = 0
    best_weights: dict[str, torch.Tensor] | None = None
    trajectory: TrajectoryLog = field(default_factory=TrajectoryLog)  # this worker's steps since its reset
    masks: dict[float, SensitivityMask] = field(default_factory=dict)  # by density; empty: none (yet)

    def consider(self, gap: float) -> bool:
        """Keep the current weights as the best if their held-out gap beats the best so far."""
        if gap >= self.best_gap:
            return False
        self.best_gap, self.best_step = gap, self.meta_step
        self.best_weights = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        return True

    def best_policy(self) -> PerturbationPolicy:
        """The selected policy: the best validated weights, or an untrained one (sigma = 1) if none beat it."""
        best = PerturbationPolicy(self.policy.config)
        if self.best_weights is not None:
            best.load_state_dict(self.best_weights)
        return best


def save_checkpoint(state: TrainingState, folder: Path) -> Path:
    """Write ``state`` into ``folder`` (replaced whole: a reader never sees half a checkpoint)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file({k: v.detach().contiguous() for k, v in state.policy.state_dict().items()},
                  str(tmp / "policy.safetensors"))
        if state.best_weights is not None:
            save_file({k: v.contiguous() for k, v in state.best_weights.items()}, str(tmp / "best.safetensors"))
        optim = state.optimizer.state_dict()
        tensors, scalars = {}, {}
        for index, entry in optim["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{key}"] = value.detach().contiguous()
                else:
                    scalars[f"{index}.{key}"] = value
        save_file(tensors or {"empty": torch.zeros(0)}, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({
            "meta_step": state.meta_step, "history": state.history, "best_gap": state.best_gap,
            "best_step": state.best_step,
            "param_groups": optim["param_groups"], "optimizer_scalars": scalars}, indent=1))
        state.trajectory.save(tmp)
        for i, density in enumerate(sorted(state.masks)):
            state.masks[density].save(tmp / f"mask-{i}.safetensors")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_checkpoint(state: TrainingState, folder: Path) -> TrainingState:
    """Fill ``state`` (a fresh policy and optimizer of the same shape) from ``folder``."""
    folder = Path(folder)
    state.policy.load_state_dict(load_file(str(folder / "policy.safetensors")))
    saved = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "optimizer.safetensors"))
    entries: dict[int, dict] = {}
    for name, value in [*tensors.items(), *saved["optimizer_scalars"].items()]:
        if name == "empty":
            continue
        index, key = name.split(".", 1)
        entries.setdefault(int(index), {})[key] = value
    state.optimizer.load_state_dict({"state": entries, "param_groups": saved["param_groups"]})
    state.meta_step = saved["meta_step"]
    state.history = saved["history"]
    state.best_gap, state.best_step = saved["best_gap"], saved["best_step"]
    best = folder / "best.safetensors"
    state.best_weights = load_file(str(best)) if best.exists() else None
    state.trajectory.load(folder)
    masks = [SensitivityMask.from_file(path) for path in sorted(folder.glob("mask-*.safetensors"))]
    state.masks = {mask.density: mask for mask in masks}
    return state

"""Meta-training checkpoints: a folder of safetensors and JSON (no pickle), written atomically.

``policy.safetensors``   the policy's weights
``optimizer.safetensors``  the meta-optimizer's (Adam's) tensors; its scalars go in state.json
``state.json``           the next meta-step, the optimizer's param groups, and the metrics history so far
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

from l2lzo.policy_net import PerturbationPolicy


@dataclass
class TrainingState:
    """Where a run is: its policy, meta-optimizer, next meta-step and history."""

    policy: PerturbationPolicy
    optimizer: torch.optim.Optimizer
    meta_step: int = 0
    history: list[dict] = field(default_factory=list)


def save_checkpoint(state: TrainingState, folder: Path) -> Path:
    """Write ``state`` into ``folder`` (replaced whole: a reader never sees half a checkpoint)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file({k: v.detach().contiguous() for k, v in state.policy.state_dict().items()},
                  str(tmp / "policy.safetensors"))
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
            "meta_step": state.meta_step, "history": state.history,
            "param_groups": optim["param_groups"], "optimizer_scalars": scalars}, indent=1))
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
    return state

"""benchmarks/policy_eval.py's bookkeeping: which lr each arm runs at, steps to target, stale runs refused."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from l2lzo.finetune import FinetuneConfig

_SPEC = importlib.util.spec_from_file_location(
    "policy_eval", Path(__file__).parents[1] / "benchmarks" / "policy_eval.py")
policy_eval = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(policy_eval)


class Artifact:
    def __init__(self, sigma1_lr):
        self._sigma1 = sigma1_lr

    def recommended(self):
        return {"lr": 5e-5, "eps": 1e-3, "steps": 300}

    def sigma1_lr(self):
        return self._sigma1


def test_headline_lrs_give_each_arm_its_own_validated_lr():
    assert policy_eval.headline_lrs(None, Artifact(1e-4)) == (
        5e-5, {"policy": 5e-5, "sigma=1": 1e-4}, "each arm at its own validated lr")
    assert policy_eval.headline_lrs(2e-5, Artifact(1e-4))[1] == {"policy": 2e-5, "sigma=1": 2e-5}
    _, arms, rule = policy_eval.headline_lrs(None, Artifact(None))
    assert arms == {"policy": 5e-5, "sigma=1": 5e-5} and "records no validated lr for sigma = 1" in rule


def row(task, seed, arm, curve):
    return {"task": task, "seed": seed, "arm": arm, "curve": curve}


def test_steps_to_target_is_the_policy_step_reaching_mezo_final_loss():
    rows = [
        row("a", 0, "policy", [(0, 1.0), (25, 0.8), (50, 0.6), (100, 0.5)]),
        row("a", 0, "sigma=1", [(0, 1.0), (25, 0.9), (50, 0.8), (100, 0.7)]),  # target 0.7: policy at 50
        row("b", 0, "policy", [(0, 1.0), (100, 0.9)]),
        row("b", 0, "sigma=1", [(0, 1.0), (100, 0.5)]),  # never reached
        row("c", 0, "policy", [(0, 1.0), (25, 0.4), (100, 0.3)]),
        row("c", 0, "sigma=1", [(0, 1.0), (100, 0.4)]),  # at 25
    ]
    result = policy_eval.steps_to_target(rows)
    assert result["pairs"] == 3 and result["reached"] == 2
    assert result["ratios"] == [0.5, None, 0.25] and result["median_ratio"] == 0.5
    json.dumps(result, allow_nan=False)  # a miss is null, not Infinity
    assert policy_eval.steps_to_target(rows[2:4])["median_ratio"] is None
    assert policy_eval.first_step_at([(0, 2.0)], 1.0) is None


def test_a_stored_run_with_other_settings_is_refused(tmp_path):
    base = FinetuneConfig(task="polarity", steps=300, eval_every=25, lr=5e-5, seed=0)
    path = tmp_path / "polarity_sigma1_lr5e-05_s0.json"
    path.write_text(json.dumps({"config": {**base.__dict__, "eval_every": 37}, "summary": {"dev_loss": 0.5}}))
    with pytest.raises(SystemExit, match=r"made with other settings \(eval_every\)"):
        policy_eval.run_arm(base, "sigma=1", None, tmp_path)
    path.write_text(json.dumps({"config": base.__dict__, "summary": {"dev_loss": 0.5}}))
    assert policy_eval.run_arm(replace(base), "sigma=1", None, tmp_path) == {"dev_loss": 0.5}


def test_lr_grids_grow_past_an_edge_only_while_the_best_sits_there():
    from l2lzo.lr_grid import extend_at_edges, scaled_grid

    assert scaled_grid(2e-4) == [1e-4, 2e-4, 4e-4]
    loss = {2e-5: 2.0, 4e-5: 1.0, 8e-5: 1.5}  # best inside: nothing to add
    ran: list[float] = []

    def best(grid):
        return [min(grid, key=lambda lr: loss.get(lr, 9.0))]

    assert extend_at_edges([8e-5, 2e-5, 4e-5], ran.append, best) == ([2e-5, 4e-5, 8e-5], {"low": 0, "high": 0})
    assert ran == []
    loss = {2e-5: 0.8, 4e-5: 1.5, 8e-5: 2.0, 1e-5: 0.5, 5e-6: 0.4}  # better and better below the grid
    grid, added = extend_at_edges([2e-5, 4e-5, 8e-5], ran.append, best)
    assert ran == [1e-5, 5e-6] and added == {"low": 2, "high": 0}  # at most 2 points past an edge
    assert grid == [5e-6, 1e-5, 2e-5, 4e-5, 8e-5]
    assert extend_at_edges([1e-4, 2e-4], ran.append, best)[0] == [1e-4, 2e-4]  # a short grid is taken as given
    assert extend_at_edges([0.25, 0.5, 1.0], ran.append, lambda g: [1.0])[0] == [0.25, 0.5, 1.0]  # lr stays <= 1
    assert ran == [1e-5, 5e-6]


def test_a_random_shape_is_seeded_bounded_by_the_policys_range_and_normalised(tiny_causal):
    import torch

    from l2lzo.blocks import discover_blocks

    blocks = discover_blocks(tiny_causal.model)
    shape = policy_eval.random_shape(blocks, seed=3)
    assert shape == policy_eval.random_shape(blocks, seed=3) != policy_eval.random_shape(blocks, seed=4)
    values = torch.tensor([shape[b.name] for b in blocks], dtype=torch.float64)
    d = torch.tensor([b.numel for b in blocks], dtype=torch.float64)
    assert float(values.max() / values.min()) <= 4.0 and float((d * values**2).sum()) == pytest.approx(float(d.sum()))


def test_shape_controls_run_on_a_masked_policys_mask_at_its_lr(tmp_path, tiny_causal_dir):
    from test_policy_mask import mask_for, masked_artifact, toy_task

    from l2lzo.models import load_model
    from l2lzo.policy.artifact import PolicyArtifact

    base = load_model(str(tiny_causal_dir))
    artifact = PolicyArtifact.from_file(masked_artifact(tmp_path / "p.safetensors", base, mask_for(base)))
    config = FinetuneConfig(model=str(tiny_causal_dir), task=str(toy_task(tmp_path)), steps=2, eval_every=2,
                            batch_size=4, train_size=8, dev_size=8, test_size=8, lr=1e-3)
    row = policy_eval.run_arm(config, "random-shape", artifact, tmp_path / "runs")
    saved = json.loads((tmp_path / "runs" / "toy_random-shape_lr0.001_s0.json").read_text())
    assert saved["config"]["sparse_mask"].endswith(f"mask_{artifact.sha256[:12]}.safetensors")
    assert saved["policy"]["kind"] == "sigma hook" and row["arm"] == "random-shape"
    assert policy_eval._grid_centre("random-shape", artifact) == "policy"
    assert policy_eval._grid_centre("static", artifact) == "policy"
    assert policy_eval._grid_centre("sigma=1", artifact) == "sigma=1"

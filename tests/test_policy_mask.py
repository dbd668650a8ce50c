"""Policy v2's sensitivity mask: built by the meta-trainer from its pool, split over workers, checkpointed,
tried by the final validation, carried by the artifact and run downstream on the indexed engine."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from test_meta_train import DyingRuntime, Interrupted, tiny_config
from test_policy import trained_looking

from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig, build_run_optimizer, finetune
from l2lzo.indexed_perturbation import IndexedPerturbationEngine
from l2lzo.models import CAUSAL, fingerprint, tiny_model
from l2lzo.policy.artifact import PolicyArtifact
from l2lzo.policy.network import PerturbationPolicy
from l2lzo.policy.sensitivity import ARTIFACT_COUNTS, ARTIFACT_INDICES, SensitivityMask
from l2lzo.schemes import apply_scheme
from l2lzo.scoring import Scorer
from l2lzo.tasks import load_task
from meta_train import loop, validation
from meta_train.artifact import build_policy_artifact
from meta_train.config import MetaTrainConfig
from meta_train.episodes import TaskPool
from meta_train.loop import LocalRuntime, meta_train_loop
from meta_train.sensitivity import pool_masks


def masks_of(config, rank=0, world_size=1, reduce=lambda tensors: None, loaded=None):
    loaded = loaded or tiny_model(CAUSAL)
    scorer = Scorer(apply_scheme(loaded, config.scheme), max_length=config.max_length)
    pool = TaskPool(config.train_tasks, train_size=config.train_size, seed=config.seed)
    return pool_masks(config, scorer, pool, rank=rank, world_size=world_size, all_reduce_mean=reduce,
                      fingerprint="ab" * 32)


def test_pool_masks_split_over_two_workers_equal_one_workers(tmp_path):
    """Worker r scores batches r, r + 2, ...; after the all-reduce both hold the one-worker masks."""
    config = tiny_config(tmp_path, mask_densities=[0.01, 0.1], mask_batches=5)
    alone = masks_of(config)
    shares = []
    masks_of(config, 1, 2, lambda tensors: shares.append([t.clone() for t in tensors]))

    def with_rank1(tensors):  # the mean of rank 0's and rank 1's scores, as the all-reduce gives
        for mine, theirs in zip(tensors, shares[0], strict=True):
            mine.add_(theirs).div_(2)

    shared = masks_of(config, 0, 2, with_rank1)
    assert list(shared) == [0.01, 0.1]
    for density, mask in alone.items():
        assert mask.kept == round(density * sum(mask.sizes.values())) and mask.tasks == config.train_tasks
        assert all(torch.equal(mask.indices[n], shared[density].indices[n]) for n in mask.sizes)
    small, large = alone[0.01], alone[0.1]  # a smaller density keeps a subset of a larger one's coordinates
    assert all(set(small.indices[n].tolist()) <= set(large.indices[n].tolist()) for n in small.sizes)


def test_masks_are_checkpointed_and_a_resumed_run_does_not_rescore(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, mask_densities=[0.05], mask_batches=3, checkpoint_every=2, validate_every=3)
    with pytest.raises(Interrupted):
        meta_train_loop(config, DyingRuntime(tmp_path / "ckpt", 2), loaded=tiny_model(CAUSAL))
    saved = SensitivityMask.from_file(tmp_path / "ckpt" / "mask-0.safetensors")
    assert saved.density == 0.05 and saved.fingerprint == fingerprint(tiny_model(CAUSAL).model)

    def rescored(*args, **kwargs):
        raise AssertionError("a resumed run scored the pool again")

    monkeypatch.setattr(loop, "pool_masks", rescored)
    state = meta_train_loop(config, LocalRuntime(tmp_path / "ckpt", show_progress=False), loaded=tiny_model(CAUSAL))
    assert state.meta_step == config.meta_steps
    assert all(torch.equal(state.masks[0.05].indices[n], saved.indices[n]) for n in saved.sizes)


def test_mask_config_is_checked(tmp_path):
    from l2lzo.errors import ConfigError

    for bad, message in [({"mask_densities": [0.0]}, "distinct and in"), ({"mask_densities": [1e-3, 1e-3]}, "distinct"),
                         ({"mask_scope": "row"}, "mask scope"), ({"mask_lr_scale": 0}, "mask lr scale"),
                         ({"mask_densities": [0.1], "mask_batches": 1, "workers": 2}, "mask batches must be")]:
        with pytest.raises(ConfigError, match=message):
            MetaTrainConfig(**bad).validate()


def mask_for(loaded, density=0.05) -> SensitivityMask:
    sizes = {n: p.numel() for n, p in loaded.model.named_parameters() if p.requires_grad}
    g = torch.Generator().manual_seed(0)
    indices = {n: torch.randperm(size, generator=g)[:max(1, round(density * size))].sort().values.to(torch.int32)
               for n, size in sizes.items()}
    return SensitivityMask(indices, sizes, density, "global", fingerprint(loaded.model), ["toy"])


def masked_artifact(path, loaded, mask, fp=None):
    policy = trained_looking(PerturbationPolicy(), 0, scale=0.5)
    data = build_policy_artifact(policy, MetaTrainConfig(model="tiny-causal"), fingerprint=fp or mask.fingerprint,
                                 recommended_lr=2e-3, metrics={}, sigma1_lr=1e-3, mask=mask)
    path.write_bytes(data)
    return path


def test_artifact_carries_the_mask_in_two_tensors_bitwise(tmp_path, tiny_causal):
    mask = mask_for(tiny_causal)
    artifact = PolicyArtifact.from_file(masked_artifact(tmp_path / "p.safetensors", tiny_causal, mask))
    assert artifact.has_mask and artifact.network() is not None  # the mask's tensors do not disturb the network
    again = artifact.mask()
    assert list(again.sizes) == list(mask.sizes) and again.density == mask.density and again.kept == mask.kept
    assert all(torch.equal(again.indices[n], mask.indices[n]) for n in mask.sizes)
    names = set(load_file(str(tmp_path / "p.safetensors")))
    assert {ARTIFACT_INDICES, ARTIFACT_COUNTS} <= names and not any(n.startswith("mask.") and n not in (
        ARTIFACT_INDICES, ARTIFACT_COUNTS) for n in names)
    assert artifact.summary()["mask"] == {"density": 0.05, "scope": "global", "tasks": ["toy"]}
    with pytest.raises(L2LZOError, match="another base model"):
        masked_artifact(tmp_path / "q.safetensors", tiny_causal, mask, fp="cd" * 32)


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda a: a.__setitem__(ARTIFACT_COUNTS, a[ARTIFACT_COUNTS][:-1]), "counts do not match"),
    (lambda a: a.__setitem__(ARTIFACT_INDICES, a[ARTIFACT_INDICES][::-1].copy()), "not sorted, unique"),
    (lambda a: a.__setitem__(ARTIFACT_COUNTS, a[ARTIFACT_COUNTS].astype(np.int32)), "counts do not match"),
])
def test_a_damaged_mask_in_an_artifact_is_refused_in_one_line(tmp_path, tiny_causal, tamper, message):
    path = masked_artifact(tmp_path / "p.safetensors", tiny_causal, mask_for(tiny_causal))
    artifact = PolicyArtifact.from_file(path)
    arrays = load_file(str(path))
    tamper(arrays)
    save_file(arrays, str(path), metadata=artifact.metadata)
    with pytest.raises(L2LZOError, match=message) as err:
        PolicyArtifact.from_file(path).mask()
    assert "\n" not in str(err.value)


def toy_task(tmp_path):
    task = tmp_path / "toy.jsonl"
    task.write_text("".join(json.dumps({"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": "ab"[i % 2]})
                            + "\n" for i in range(40)))
    return task


def test_finetune_with_a_masked_policy_perturbs_only_the_mask(tmp_path, tiny_causal_dir):
    from l2lzo.models import load_model

    base = load_model(str(tiny_causal_dir))
    mask = mask_for(base)
    path = masked_artifact(tmp_path / "p.safetensors", base, mask)
    task = toy_task(tmp_path)
    config = FinetuneConfig(model=str(tiny_causal_dir), task=str(task), steps=2, eval_every=2, batch_size=4,
                            train_size=8, dev_size=8, test_size=8, policy=str(path), output=str(tmp_path / "r.json"))
    artifact = PolicyArtifact.from_file(path)
    splits = load_task(str(task), seed=0, train_size=8, dev_size=8, test_size=8)
    optimizer, _, sigma = build_run_optimizer(config, Scorer(base), splits.train, artifact)
    assert isinstance(optimizer.engine, IndexedPerturbationEngine) and optimizer.engine.kept == mask.kept
    assert sigma is not None  # the shape runs on top of the mask
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    for batch in (splits.train[:4], splits.train[4:]):
        from l2lzo.finetune import grouped_loss
        optimizer.step(grouped_loss(Scorer(base), batch))
    for name, param in base.model.named_parameters():
        moved = (param.detach() != before[name]).flatten().nonzero().flatten().to(torch.int32)
        assert set(moved.tolist()) <= set(mask.indices[name].tolist()), name
    # --sparsity replaces the policy's mask (random z, dense engine); a full run records the mask it used.
    random_z = FinetuneConfig(**{**asdict(config), "sparsity": 0.5})
    assert build_run_optimizer(random_z, Scorer(base), splits.train, artifact)[0].mask is not None
    result = finetune(config, progress=False)
    assert result.policy["mask"]["density"] == 0.05 and len(result.evals) == 2


class FakeRun:
    def __init__(self, dev_loss):
        self.evals = [{"dev_loss": dev_loss, "dev_accuracy": 0.5}]


def test_final_validation_tries_every_arm_on_its_own_grid_ships_the_best_and_resumes(tmp_path, monkeypatch):
    """The shape on the mask is best here (at 8x the dense lr); MeZO keeps its own lr; a rerun reads results back."""
    import math

    calls = []

    def fake_finetune(config, progress):
        calls.append(config)
        masked, shaped = config.sparse_mask is not None, config.policy is not None
        best = {(False, False): 1e-4, (False, True): 4e-4, (True, False): 1e-4, (True, True): 8e-4}[(shaped, masked)]
        level = 1.0 - 0.05 * masked - 0.02 * shaped
        run = FakeRun(level + math.log2(config.lr / best) ** 2 * 0.01)
        config.output_path().write_text(json.dumps({"config": asdict(config), "evals": run.evals}))
        return run

    monkeypatch.setattr(validation, "finetune", fake_finetune)
    masks = {0.01: tmp_path / "m.safetensors"}
    config = MetaTrainConfig(validation_tasks=["task_a"], lr_grid=[5e-5, 1e-4, 2e-4], final_steps=3)
    result = validation.final_validation(config, tmp_path / "p.safetensors", tmp_path, say=lambda _: None, masks=masks)
    assert set(result["arms"]) == {"policy", "mezo", "mask 0.01", "policy + mask 0.01"}
    assert result["chosen_arm"] == "policy + mask 0.01" and result["chosen_density"] == 0.01
    assert result["recommended_lr"] == 8e-4 and result["recommended_lr_sigma1"] == 1e-4
    assert result["arms"]["mask 0.01"]["lr_grid"] == [2e-4, 4e-4, 8e-4]  # 4 x the dense grid, best inside
    assert result["lr_grid"] == [2e-4, 4e-4, 8e-4, 1.6e-3] and result["grid_extended"] == {"low": 0, "high": 1}
    assert result["wins"] == 1 and result["dev_loss_policy"] == pytest.approx(0.93)
    assert all((c.sparse_mask is not None) == ("mask" in c.output) for c in calls)
    ran = len(calls)
    again = validation.final_validation(config, tmp_path / "p.safetensors", tmp_path, say=lambda _: None, masks=masks)
    assert len(calls) == ran and again["arms"] == result["arms"]  # every run read back from its results JSON


def test_compare_and_show_say_the_policy_runs_on_its_mask(tmp_path, tiny_causal_dir, capsys):
    from l2lzo.cli import main
    from l2lzo.models import load_model

    base = load_model(str(tiny_causal_dir))
    path = masked_artifact(tmp_path / "p.safetensors", base, mask_for(base))
    assert main(["finetune", "--model", str(tiny_causal_dir), "--task", str(toy_task(tmp_path)), "--steps", "2",
                 "--eval-every", "2", "--batch-size", "4", "--train-size", "8", "--dev-size", "8", "--test-size", "8",
                 "--policy", str(path), "--compare", "--output", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "the policy arm perturbs only its mask's coordinates (density 0.05, global, from 1 tasks)" in out
    mezo = json.loads((tmp_path / "c.sigma1.json").read_text())
    assert mezo["config"]["lr"] == 1e-3 and mezo["policy"] is None  # sigma = 1 at its own lr, dense
    assert main(["policy", "show", str(path), "--model", str(tiny_causal_dir),
                 "--output", str(tmp_path / "s.png")]) == 0
    assert "sensitivity mask: density 0.05, global scope, from 1 tasks" in capsys.readouterr().out

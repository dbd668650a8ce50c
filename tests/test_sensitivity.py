"""Sensitivity masks: squared-gradient scores, exact top-k selection, the mask file, and sparse ZO with it."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from l2lzo.blocks import discover_blocks
from l2lzo.cli import main
from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig, finetune, grouped_loss
from l2lzo.indexed_perturbation import IndexedPerturbationEngine
from l2lzo.models import CAUSAL, fingerprint, tiny_model
from l2lzo.optim import ZOSGD, ZOAdam, ZOSGDConservative
from l2lzo.policy.sensitivity import SensitivityMask, build_mask, squared_gradient_scores, top_indices
from l2lzo.scoring import Scorer
from l2lzo.sparsity import SENSITIVE, SparsityConfig


def closures(loaded, batches):
    scorer = Scorer(loaded, max_length=32)
    return [grouped_loss(scorer, b) for b in batches]


def test_scores_are_squared_gradients_summed_over_batches(label_word_examples):
    loaded = tiny_model(CAUSAL)
    batches = [label_word_examples[:2], label_word_examples[2:]]
    scores = squared_gradient_scores(loaded.model, closures(loaded, batches))
    assert all(p.grad is None for p in loaded.model.parameters())  # each gradient is freed once folded
    expected = {}
    for closure in closures(loaded, batches):
        loaded.model.zero_grad()
        closure().backward()
        for name, p in loaded.model.named_parameters():
            expected[name] = expected.get(name, 0) + p.grad.detach().pow(2)
    assert set(scores) == {b.name for b in discover_blocks(loaded.model)}
    for name, score in scores.items():
        torch.testing.assert_close(score, expected[name])


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4), density=st.floats(0.01, 1.0),
       scope=st.sampled_from(["layer", "global"]), data=st.data())
def test_top_indices_keep_exactly_the_highest_scores_ties_first_in_order(sizes, density, scope, data):
    # Few distinct values, so ties are common.
    scores = {f"t{i}": torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0, 2.0, 3.0]), min_size=n,
                                                          max_size=n)), dtype=torch.float32)
              for i, n in enumerate(sizes)}
    kept = top_indices(scores, density, scope)
    groups = [list(scores)] if scope == "global" else [[n] for n in scores]
    for group in groups:
        flat = torch.cat([scores[n] for n in group])
        mask = torch.cat([torch.zeros(scores[n].numel(), dtype=torch.bool).index_fill_(0, kept[n].long(), True)
                          for n in group])
        assert int(mask.sum()) == round(density * flat.numel())
        if mask.any() and (~mask).any():
            assert flat[mask].min() >= flat[~mask].max()
            threshold = flat[mask].min()
            tied = (flat == threshold).nonzero().flatten()
            assert mask[tied].tolist() == sorted(mask[tied].tolist(), reverse=True)  # earliest ties kept
    for n in scores:
        assert kept[n].dtype == torch.int32 and torch.equal(kept[n], kept[n].sort().values)


def test_top_indices_reject_bad_density_and_scope():
    with pytest.raises(L2LZOError, match=r"density must be in \(0, 1\]"):
        top_indices({"a": torch.ones(3)}, 0.0)
    with pytest.raises(L2LZOError, match="unknown mask scope"):
        top_indices({"a": torch.ones(3)}, 0.5, "row")


def make_mask(loaded, examples, density=0.05, scope="global"):
    return build_mask(loaded.model, closures(loaded, [examples]), density=density, scope=scope,
                      fingerprint=fingerprint(loaded.model), tasks=["toy"])


def test_mask_file_round_trips_bitwise(tmp_path, label_word_examples):
    loaded = tiny_model(CAUSAL)
    mask = make_mask(loaded, label_word_examples)
    again = SensitivityMask.from_file(mask.save(tmp_path / "m.safetensors"))
    assert again.sizes == mask.sizes and again.density == mask.density and again.tasks == ["toy"]
    assert again.fingerprint == fingerprint(loaded.model) and again.scope == "global"
    assert all(torch.equal(again.indices[n], mask.indices[n]) for n in mask.indices)
    total = sum(mask.sizes.values())
    assert again.kept == round(0.05 * total)
    assert (tmp_path / "m.safetensors").stat().st_size < 4 * again.kept + 4096  # 4 bytes per kept index + header


@pytest.mark.parametrize(("tamper", "message"), [
    (lambda t, m: t.__setitem__("w", torch.tensor([3, 1], dtype=torch.int32)), "not sorted, unique and in"),
    (lambda t, m: t.__setitem__("w", torch.tensor([1, 10], dtype=torch.int32)), "not sorted, unique and in"),
    (lambda t, m: t.__setitem__("w", torch.tensor([1, 2], dtype=torch.int64)), "must be 1-d int32"),
    (lambda t, m: m.__setitem__("format", "other"), "is not a sensitivity mask"),
    (lambda t, m: m.__setitem__("sizes", "{oops"), "malformed metadata"),
    (lambda t, m: m.__setitem__("sizes", json.dumps({"v": 10})), "name different tensors"),
])
def test_a_damaged_mask_file_is_refused_in_one_line(tmp_path, tamper, message):
    tensors = {"w": torch.tensor([1, 2], dtype=torch.int32)}
    meta = {"format": "l2lzo-sensitivity-mask/1", "density": "0.2", "scope": "global", "fingerprint": "ab",
            "tasks": "[]", "sizes": json.dumps({"w": 10})}
    tamper(tensors, meta)
    save_file(tensors, tmp_path / "m.safetensors", metadata=meta)
    with pytest.raises(L2LZOError, match=message) as err:
        SensitivityMask.from_file(tmp_path / "m.safetensors")
    assert "\n" not in str(err.value)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(L2LZOError, match="not a readable sensitivity mask"):
        SensitivityMask.from_file(tmp_path / "junk.safetensors")
    with pytest.raises(L2LZOError, match="no sensitivity mask at"):
        SensitivityMask.from_file(tmp_path / "absent.safetensors")


def sensitive(path) -> SparsityConfig:
    return SparsityConfig(0.0, SENSITIVE, mask=SensitivityMask.from_file(path))


@pytest.mark.parametrize("optimizer", [ZOSGD, ZOAdam, ZOSGDConservative])
def test_sparse_zo_perturbs_and_updates_exactly_the_masks_coordinates(tmp_path, label_word_examples, optimizer):
    loaded = tiny_model(CAUSAL)
    path = make_mask(loaded, label_word_examples, density=0.1).save(tmp_path / "m.safetensors")
    mask = SensitivityMask.from_file(path)
    opt = optimizer(loaded.model, lr=1e-2, eps=1e-3, seed=3, sparsity=sensitive(path))
    assert isinstance(opt.engine, IndexedPerturbationEngine) and opt.mask is None
    assert opt.engine.kept == mask.kept
    for block in opt.blocks:
        assert torch.equal(opt.engine.indices[block.index].to(torch.int32), mask.indices[block.name])
    closure = grouped_loss(Scorer(loaded, max_length=32), label_word_examples)
    before = {b.name: b.param.detach().clone() for b in opt.blocks}
    for _ in range(3):
        opt.step(closure)
    moved_any = False
    for block in opt.blocks:
        moved = (block.param.detach() != before[block.name]).flatten().nonzero().flatten().to(torch.int32)
        assert set(moved.tolist()) <= set(mask.indices[block.name].tolist()), block.name
        moved_any |= bool(moved.numel())
    assert moved_any or optimizer is ZOSGDConservative  # Cons may keep theta when both candidates are worse


def test_finetune_with_a_mask_runs_and_refuses_what_it_was_not_made_for(tmp_path, tiny_causal_dir, capsys):
    from l2lzo.models import load_model

    base = load_model(str(tiny_causal_dir))
    task = tmp_path / "toy.jsonl"
    task.write_text("".join(json.dumps({"text": f"{'good' if i % 2 else 'bad'} item {i}", "label": "ab"[i % 2]})
                            + "\n" for i in range(40)))
    path = tmp_path / "m.safetensors"
    assert main(["profile-sensitivity", "--model", str(tiny_causal_dir), "--tasks", str(task), "--batches", "2",
                 "--batch-size", "4", "--density", "0.01", "--output", str(path)]) == 0
    assert "kept" in capsys.readouterr().out and SensitivityMask.from_file(path).fingerprint == fingerprint(
        base.model)
    config = FinetuneConfig(model=str(tiny_causal_dir), task=str(task), steps=2, eval_every=2, batch_size=4,
                            train_size=8, dev_size=8, test_size=8, lr=1e-3, sparse_mask=str(path),
                            output=str(tmp_path / "r.json"))
    result = finetune(config, progress=False)
    assert result.config["sparse_mask"] == str(path) and len(result.evals) == 2
    with pytest.raises(L2LZOError, match="does not fit these trainable tensors"):
        finetune(FinetuneConfig(**{**config.__dict__, "scheme": "lora"}), progress=False)
    made = SensitivityMask.from_file(path)
    wrong = SensitivityMask(made.indices, made.sizes, made.density, "global", "0" * 64, ["toy"]).save(
        tmp_path / "wrong.safetensors")
    with pytest.raises(L2LZOError, match="made for fingerprint 000000000000"):
        finetune(FinetuneConfig(**{**config.__dict__, "sparse_mask": str(wrong)}), progress=False)
    with pytest.raises(L2LZOError, match="drop --sparsity"):
        FinetuneConfig(sparse_mask=str(path), sparsity=0.5).validate()
    with pytest.raises(L2LZOError, match="apply to ZO optimizers"):
        FinetuneConfig(sparse_mask=str(path), optimizer="fo-adam").validate()

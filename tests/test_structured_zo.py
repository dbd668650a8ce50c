"""Structured ZO: block groups, block-wise estimates, sparse masks, layer profiling and hybrid ZO/FO."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2lzo.blocks import discover_blocks, group_blocks, group_key
from l2lzo.cli import main
from l2lzo.errors import L2LZOError
from l2lzo.finetune import FinetuneConfig, finetune, grouped_loss
from l2lzo.models import CAUSAL, ENCODER, tiny_model
from l2lzo.optim import ZOSGD, HybridZOFO, build_optimizer
from l2lzo.perturbation import Direction, PerturbationEngine
from l2lzo.profiling import GroupImportance, choose_fo_groups, profile_layers
from l2lzo.schemes import apply_scheme
from l2lzo.scoring import Scorer
from l2lzo.sparsity import SparseMask, SparsityConfig, kth_smallest_magnitude
from l2lzo.tasks import load_task


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def loss_closure(loaded, examples):
    return grouped_loss(Scorer(loaded, max_length=32), examples)


# ---- groups ---------------------------------------------------------------------------------------


def test_layer_groups_are_generic_over_architectures():
    causal = group_blocks(discover_blocks(tiny_model(CAUSAL, layers=3).model), "layer")
    assert list(causal) == ["embed", "layer.0", "layer.1", "layer.2", "norm"]
    encoder = group_blocks(discover_blocks(tiny_model(ENCODER, layers=2).model), "layer")
    assert {"layer.0", "layer.1", "embed"} <= set(encoder)
    parts = group_blocks(discover_blocks(tiny_model(CAUSAL).model), "attn-mlp")
    assert {b.role for b in parts["layer.0.attn"]} == {"q", "k", "v", "o"}
    assert {b.role for b in parts["layer.1.mlp"]} == {"gate", "up", "down"}
    lora = discover_blocks(apply_scheme(tiny_model(CAUSAL), "lora").model)
    assert {group_key(b, "attn-mlp") for b in lora} == {"layer.0.attn", "layer.1.attn"}
    tensors = group_blocks(lora, "tensor")
    assert len(tensors) == len(lora)
    with pytest.raises(ValueError, match="unknown group level"):
        group_key(lora[0], "row")


# ---- block-wise ZO -------------------------------------------------------------------------------


def test_blockwise_step_runs_one_estimate_per_group(label_word_examples):
    loaded = tiny_model(CAUSAL, layers=2)
    closure = loss_closure(loaded, label_word_examples)
    calls = []

    def counting():
        calls.append(1)
        return closure()

    opt = ZOSGD(loaded.model, lr=1e-2, eps=1e-3, n_queries=2, seed=3, group_level="layer")
    assert len(opt.groups) == 4  # embed (tied with the head), layer.0, layer.1, final norm
    before = snapshot(loaded.model)
    opt.step(counting)
    assert len(calls) == 2 * 2 * 4
    assert changed(before, loaded.model) == set(before)  # every group got its update


def test_a_groups_update_touches_only_its_blocks(label_word_examples):
    loaded = tiny_model(CAUSAL, layers=2)
    opt = ZOSGD(loaded.model, lr=1e-2, eps=1e-3, seed=1, group_level="layer")
    names = {b.index: b.name for b in opt.blocks}
    for scope in opt.groups:
        before = snapshot(loaded.model)
        opt.engine.add_([Direction(17, 0.1, scope)])
        touched = changed(before, loaded.model)
        assert touched == {names[i] for i in scope}


def test_a_scoped_perturbation_reaches_only_its_blocks(label_word_examples):
    loaded = tiny_model(CAUSAL, layers=2)
    engine = PerturbationEngine(discover_blocks(loaded.model))
    layer1 = frozenset(b.index for b in engine.blocks if ".layers.1." in b.name)
    seen = {}
    with engine.swapped(lambda block, module, attr: seen.setdefault(block.index, block.param.detach()),
                        engine.covered([Direction(5, 0.1, layer1)])), torch.no_grad():
        loaded.model(torch.tensor([[1, 2, 3]]))
    assert set(seen) == layer1


# ---- sparse perturbation ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(sparsity=st.floats(0.0, 0.99), chunk_numel=st.sampled_from([64, 300, 1 << 20]), seed=st.integers(0, 99))
def test_random_masks_keep_an_exact_fraction_of_every_chunk(sparsity, chunk_numel, seed):
    loaded = tiny_model(CAUSAL)
    engine = PerturbationEngine(discover_blocks(loaded.model), chunk_numel=chunk_numel)
    mask = SparseMask(engine, SparsityConfig(sparsity, "random"), seed=seed)
    mask.resample(0)
    for block in engine.blocks:
        for chunk in range(len(engine.chunks(block))):
            bits = mask(block, chunk)
            assert int(bits.sum()) == round((1 - sparsity) * bits.numel())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_masks_keep_exactly_the_smallest_weights(scope):
    loaded = tiny_model(CAUSAL)
    engine = PerturbationEngine(discover_blocks(loaded.model), chunk_numel=256)
    mask = SparseMask(engine, SparsityConfig(0.8, "magnitude", scope))
    mask.resample(0)
    groups = [engine.blocks] if scope == "global" else [[b] for b in engine.blocks]
    for group in groups:
        magnitudes = torch.cat([b.param.detach().abs().flatten() for b in group])
        k = round(0.2 * magnitudes.numel())
        kept = torch.cat([torch.cat([mask(b, c).flatten() for c in range(len(engine.chunks(b)))]) for b in group])
        assert int(kept.sum()) == k  # exact even with ties (the norm weights are all ones)
        assert magnitudes[kept].max() <= magnitudes[~kept].min()
    assert mask.density() == pytest.approx(0.2, abs=1e-3)
    chunk_sizes = [mask(b, c).numel() for b in engine.blocks for c in range(len(engine.chunks(b)))]
    assert mask.nbytes == sum((n + 7) // 8 for n in chunk_sizes)  # one bit per parameter


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=60), data=st.data())
def test_kth_smallest_magnitude_matches_sorting(values, data):
    param = torch.nn.Parameter(torch.tensor(values, dtype=torch.float32))
    engine = PerturbationEngine(discover_blocks(torch.nn.ParameterList([param])))
    k = data.draw(st.integers(1, len(values)))
    assert kth_smallest_magnitude(engine.blocks, k) == float(param.detach().abs().sort().values[k - 1])


def test_sparse_step_leaves_masked_coordinates_bitwise_untouched(label_word_examples):
    loaded = tiny_model(CAUSAL)
    opt = ZOSGD(loaded.model, lr=1e-2, eps=1e-3, seed=2, sparsity=SparsityConfig(0.9, "random"))
    before = {b.index: b.param.detach().clone() for b in opt.blocks}
    opt.step(loss_closure(loaded, label_word_examples))
    for block in opt.blocks:
        keep = torch.cat([opt.mask(block, c) for c in range(len(opt.engine.chunks(block)))])
        moved = block.param.detach() != before[block.index]
        assert not (moved & ~keep).any(), block.name
        assert moved[keep].any() or keep.sum() == 0


def test_masks_are_resampled_every_n_steps(label_word_examples):
    loaded = tiny_model(CAUSAL)
    opt = ZOSGD(loaded.model, lr=1e-3, eps=1e-3, seed=2, sparsity=SparsityConfig(0.5, resample_every=2))
    closure = loss_closure(loaded, label_word_examples)
    block = opt.blocks[1]
    masks = []
    for _ in range(4):
        opt.step(closure)
        masks.append(opt.mask(block, 0).clone())
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[2], masks[3])
    assert not torch.equal(masks[1], masks[2])


def test_mask_seeds_of_different_runs_never_collide():
    """Runs whose seeds differ by a multiple of the resample interval must not share masks."""
    loaded = tiny_model(CAUSAL)
    masks = []
    for seed, step in ((0, 100), (100, 0)):
        opt = ZOSGD(loaded.model, lr=1e-3, seed=seed, sparsity=SparsityConfig(0.5, resample_every=100))
        opt.mask.resample(step)
        masks.append(opt.mask(opt.blocks[1], 0).clone())
    assert not torch.equal(*masks)


def test_sparsity_config_rejects_bad_values():
    for kwargs in ({"sparsity": 1.0}, {"sparsity": -0.1}, {"sparsity": 0.5, "mode": "top"},
                   {"sparsity": 0.5, "scope": "row"}, {"sparsity": 0.5, "resample_every": 0}):
        with pytest.raises(ValueError):
            SparsityConfig(**kwargs)


# ---- profiling and hybrid ZO/FO ---------------------------------------------------------------------


def test_taylor_profile_matches_a_full_backward_and_frees_gradients(label_word_examples):
    loaded = tiny_model(CAUSAL, layers=2)
    closure = loss_closure(loaded, label_word_examples)
    profile = profile_layers(loaded.model, [closure, closure])
    assert all(p.grad is None for p in loaded.model.parameters())
    closure().backward()
    blocks = group_blocks(discover_blocks(loaded.model), "layer")
    for g in profile:
        expected = 2 * sum(float((b.param.grad * b.param.detach()).abs().sum()) for b in blocks[g.group])
        assert g.score == pytest.approx(expected, rel=1e-5)
    assert sum(g.share for g in profile) == pytest.approx(1.0)


def test_fo_groups_fit_the_budget_and_prefer_importance():
    profile = [GroupImportance("a", 50, 1.0, 0), GroupImportance("b", 30, 5.0, 0), GroupImportance("c", 10, 3.0, 0),
               GroupImportance("d", 10, 0.5, 0)]
    assert choose_fo_groups(profile, 0.45) == ["b", "c"]  # 40 of 100 parameters
    assert choose_fo_groups(profile, 0.05) == []
    with pytest.raises(ValueError):
        choose_fo_groups(profile, 1.0)


def test_hybrid_fo_set_gets_gradients_and_state_the_zo_set_none(label_word_examples):
    loaded = tiny_model(CAUSAL, layers=2)
    fo_blocks = group_blocks(discover_blocks(loaded.model), "layer")["layer.1"]
    fo_names = {b.name for b in fo_blocks}
    opt = build_optimizer("zo-sgd", loaded.model, lr=1e-2, eps=1e-3, seed=0, fo_blocks=fo_blocks, fo_lr=1e-2)
    assert isinstance(opt, HybridZOFO)
    assert {b.name for b in opt.zo.blocks}.isdisjoint(fo_names)
    before = snapshot(loaded.model)
    opt.step(loss_closure(loaded, label_word_examples))
    for name, p in loaded.model.named_parameters():
        assert (p.grad is not None) == (name in fo_names), name
        assert p.requires_grad
    assert changed(before, loaded.model) == set(before)
    state_params = {id(p) for p in opt.fo.state}
    assert state_params == {id(b.param) for b in fo_blocks}


def test_finetune_hybrid_records_the_fo_set_and_profile(tmp_path, label_word_examples):
    task = tmp_path / "toy.jsonl"
    task.write_text("".join(json.dumps({"text": f"{'good' if i % 2 else 'bad'} {i}", "label": "ab"[i % 2]}) + "\n"
                            for i in range(40)))
    splits = load_task(str(task), train_size=8, dev_size=8, test_size=8)
    config = FinetuneConfig(model="tiny", task=str(task), steps=2, eval_every=2, batch_size=4, lr=1e-3,
                            train_size=8, dev_size=8, test_size=8, hybrid_fo_budget=0.45, profile_batches=2,
                            sparsity=0.5, zo_blocks="layer", output=str(tmp_path / "run.json"))
    result = finetune(config, loaded=tiny_model(CAUSAL, layers=2), splits=splits, progress=False)
    structure = json.loads((tmp_path / "run.json").read_text())["structure"]
    assert structure == result.structure
    assert structure["fo_groups"] and 0 < structure["fo_parameters"] <= 0.45 * result.trainable_parameters
    assert {g["group"] for g in structure["profile"]} >= set(structure["fo_groups"])
    assert structure["mask_bytes"] > 0 and structure["zo_groups"] >= 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--optimizer", "fo-adam", "--sparsity", "0.5"], "apply to ZO optimizers"),
    (["--sparsity", "1"], "sparsity must be in [0, 1)"),
    (["--hybrid-fo-budget", "1"], "--hybrid-fo-budget must be in [0, 1)"),
    (["--sparse-resample", "0"], "sparse resample interval must be >= 1"),
])
def test_bad_structure_options_are_one_line(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code = main(["finetune", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_profile_layers_cli_writes_table_json_and_png(tiny_causal_dir, tmp_path, capsys):
    task = tmp_path / "toy.jsonl"
    task.write_text("".join(json.dumps({"text": f"item {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40)))
    code = main(["profile-layers", "--model", str(tiny_causal_dir), "--task", str(task), "--batches", "2",
                 "--batch-size", "4", "--train-size", "8", "--fo-budget", "0.45", "--output", str(tmp_path / "prof")])
    out = capsys.readouterr().out
    assert code == 0 and "layer.0" in out and "FO set at budget 45%" in out
    saved = json.loads((tmp_path / "prof.json").read_text())
    assert saved["fo_groups"] and len(saved["profile"]) == 4
    assert (tmp_path / "prof.png").read_bytes()[:4] == b"\x89PNG"


def test_fo_groups_are_not_picked_from_a_profile_without_signal(label_word_examples):
    # At LoRA's initialisation B = 0, so |g * theta| is 0 for B and A's gradient is 0: a taylor profile is all
    # zeros, and picking by order would put the FO set on layer 0 (the longest backward). grad-norm sees B's
    # gradient and picks by it.
    loaded = apply_scheme(tiny_model(CAUSAL, layers=2), "lora")
    closure = loss_closure(loaded, label_word_examples)
    taylor = profile_layers(loaded.model, [closure], metric="taylor")
    assert taylor and all(g.score == 0 for g in taylor)
    with pytest.raises(L2LZOError, match="grad-norm"):
        choose_fo_groups(taylor, 0.9)
    grad_norm = profile_layers(loaded.model, [closure], metric="grad-norm")
    assert choose_fo_groups(grad_norm, 0.9)

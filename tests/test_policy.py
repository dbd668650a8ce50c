"""The learned policy: normalisation and bounds, features, the optimizer seam, artifacts and `finetune --policy`."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2lzo.blocks import ROLES, discover_blocks
from l2lzo.cli import main
from l2lzo.client import PolicyWarning
from l2lzo.errors import ConfigError, L2LZOError
from l2lzo.finetune import FinetuneConfig, finetune, grouped_loss
from l2lzo.models import CAUSAL, ENCODER, fingerprint, tiny_model
from l2lzo.optim import ZOSGD, build_optimizer
from l2lzo.policy.artifact import PolicyArtifact
from l2lzo.policy.features import BLOCK_FEATURES, STEP_FEATURES, BlockFeatures, block_features
from l2lzo.policy.network import LearnedSigma, PerturbationPolicy, PolicyConfig
from l2lzo.schemes import SCHEMES, apply_scheme
from l2lzo.scoring import Scorer
from l2lzo.tasks import load_task
from meta_train.artifact import build_policy_artifact
from meta_train.config import MetaTrainConfig


def trained_looking(policy: PerturbationPolicy, seed: int = 0, scale: float = 2.0) -> PerturbationPolicy:
    """Random weights everywhere (a fresh policy's zero head would make sigma = 1 whatever the input)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return policy


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 2**31), scale=st.floats(0.01, 50),
       max_ratio=st.floats(1.5, 64), log_numel=st.lists(st.floats(0, 8), min_size=40, max_size=40))
def test_normalisation_and_bounds_hold_for_any_features(n, seed, scale, max_ratio, log_numel):
    policy = trained_looking(PerturbationPolicy(PolicyConfig(max_ratio=max_ratio)), seed, scale)
    g = torch.Generator().manual_seed(seed)
    features = BlockFeatures(names=tuple(f"b{i}" for i in range(n)),
                             roles=torch.randint(0, len(ROLES), (n,), generator=g),
                             values=torch.randn(n, len(BLOCK_FEATURES), generator=g) * scale,
                             numels=torch.tensor([10 ** x for x in log_numel[:n]], dtype=torch.float64).round())
    with torch.no_grad():
        sigma = policy(features, torch.randn(len(STEP_FEATURES), generator=g) * scale)
    d = features.numels
    assert torch.isfinite(sigma).all() and (sigma > 0).all()
    assert float((d * sigma**2).sum()) == pytest.approx(float(d.sum()), rel=1e-9)
    assert float(sigma.max() / sigma.min()) <= max_ratio * (1 + 1e-6)  # float32 log-shape


def test_an_untrained_policy_is_exactly_mezo(tiny_causal):
    blocks = discover_blocks(tiny_causal.model)
    sigma = PerturbationPolicy()(block_features(blocks, "full"), torch.zeros(len(STEP_FEATURES)))
    assert torch.equal(sigma, torch.ones(len(blocks), dtype=torch.float64))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family", [CAUSAL, ENCODER])
def test_features_are_finite_and_bounded_for_every_scheme(scheme, family):
    loaded = apply_scheme(tiny_model(family), scheme)
    features = block_features(discover_blocks(loaded.model), scheme)
    assert features.values.shape == (len(features.names), len(BLOCK_FEATURES))
    assert torch.isfinite(features.values).all() and features.values.abs().max() <= 2.0
    assert (features.numels > 0).all()
    scheme_columns = features.values[:, [BLOCK_FEATURES.index(f"scheme_{s}") for s in SCHEMES]]
    assert torch.equal(scheme_columns.sum(1), torch.ones(len(features.names)))


def test_sigma_follows_block_names_under_reindexing_and_hybrid_subsets(tiny_causal, label_word_examples):
    """The hook's sigma is keyed by name: a hybrid's ZO share gets each of its blocks' own value."""
    names = [b.name for b in discover_blocks(tiny_causal.model)]
    wanted = {name: 1.0 + i / 10 for i, name in enumerate(names)}
    fo_blocks = [b for b in discover_blocks(tiny_causal.model) if ".layers.1." in b.name]
    hybrid = build_optimizer("zo-sgd", tiny_causal.model, lr=1e-3, fo_blocks=fo_blocks)
    seen = []
    hybrid.set_sigma_hook(lambda info: seen.append([b.name for b in info.blocks]) or wanted)
    hybrid.step(grouped_loss(Scorer(tiny_causal), label_word_examples))
    zo = hybrid.zo
    assert seen == [[b.name for b in zo.blocks]] and all(".layers.1." not in n for n in seen[0])
    assert zo.engine.sigma.tolist() == [wanted[b.name] for b in zo.blocks]
    # Re-indexed (another order of the same blocks): every block still gets its own sigma.
    reordered = ZOSGD(tiny_causal.model, lr=1e-3, blocks=list(reversed(discover_blocks(tiny_causal.model))))
    reordered.set_sigma(wanted)
    assert reordered.engine.sigma.tolist() == [wanted[b.name] for b in reordered.blocks]


def test_learned_sigma_is_computed_once_per_step_and_shared(tiny_causal, label_word_examples):
    policy = trained_looking(PerturbationPolicy(), scale=0.5)
    opt = ZOSGD(tiny_causal.model, lr=1e-3, seed=1)
    hook = LearnedSigma(policy, "full", total_steps=4)
    calls = []
    opt.set_sigma_hook(lambda info: calls.append(info.step) or hook(info))
    closure = grouped_loss(Scorer(tiny_causal), label_word_examples)
    for _ in range(3):
        opt.step(closure)
    assert calls == [0, 1, 2]
    assert opt.engine.sigma.tolist() == [hook.last_sigma[b.name] for b in opt.blocks]
    assert len(set(hook.last_sigma.values())) > 1  # a real shape, not sigma = 1


def test_non_finite_policy_output_falls_back_to_one_with_one_warning(tiny_causal, label_word_examples):
    policy = PerturbationPolicy()
    with torch.no_grad():
        policy.head.bias.fill_(float("nan"))
    opt = ZOSGD(tiny_causal.model, lr=1e-3)
    opt.set_sigma_hook(LearnedSigma(policy, "full", total_steps=3))
    closure = grouped_loss(Scorer(tiny_causal), label_word_examples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert math.isfinite(opt.step(closure))
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert opt.engine.sigma.tolist() == [1.0] * len(opt.blocks)


@pytest.mark.parametrize("name", ["zo-sgd-sign", "zo-adam"])
def test_the_policy_is_refused_where_sigma_means_nothing(name, tiny_causal):
    opt = build_optimizer(name, tiny_causal.model, lr=1e-3)
    with pytest.raises(ConfigError, match="sigma"):
        opt.set_sigma_hook(lambda info: {})
    with pytest.raises(L2LZOError, match="--policy does not apply"):
        FinetuneConfig(optimizer=name, policy="auto").validate()


def write_artifact(path, loaded, seed: int = 0, model: str = "tiny-causal", fp: str | None = None,
                   sigma1_lr: float | None = None):
    policy = trained_looking(PerturbationPolicy(), seed, scale=0.5)
    config = MetaTrainConfig(model=model, lr=2e-3)
    data = build_policy_artifact(policy, config, fingerprint=fp or fingerprint(loaded.model), recommended_lr=2e-3,
                                 metrics={"validation": {"wins": 1}}, sigma1_lr=sigma1_lr)
    path.write_bytes(data)
    return policy


def test_artifact_round_trip_is_bitwise_and_carries_the_metadata(tmp_path, tiny_causal):
    policy = write_artifact(tmp_path / "p.safetensors", tiny_causal)
    artifact = PolicyArtifact.from_file(tmp_path / "p.safetensors")
    loaded = artifact.network()
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert a.view(-1).view(torch.uint8).equal(b.view(-1).view(torch.uint8)), name
    assert artifact.is_learned and artifact.fingerprint == fingerprint(tiny_causal.model)
    assert artifact.recommended() == {"lr": 2e-3, "eps": 1e-3, "steps": MetaTrainConfig().final_steps}
    training = json.loads(artifact.metadata["training_config"])
    assert training["policy_numbers"] == policy.numbers < 10_000
    assert set(training["train_tasks"]).isdisjoint(training["validation_tasks"])
    assert json.loads(artifact.metadata["metrics"]) == {"validation": {"wins": 1}}


def toy_task(path, n=40):
    rows = [{"text": f"{'good' if i % 2 else 'bad'} thing number {i}", "label": "ab"[i % 2]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_finetune_runs_a_policy_file_and_records_it(tmp_path, tiny_causal):
    write_artifact(tmp_path / "p.safetensors", tiny_causal)
    task = toy_task(tmp_path / "toy.jsonl")
    config = FinetuneConfig(model="tiny", task=str(task), steps=4, eval_every=4, batch_size=4, train_size=8,
                            dev_size=8, test_size=8, policy=str(tmp_path / "p.safetensors"),
                            output=str(tmp_path / "run.json"))
    splits = load_task(str(task), train_size=8, dev_size=8, test_size=8)
    result = finetune(config, loaded=tiny_causal, splits=splits, progress=False)
    assert result.config["lr"] == 2e-3  # the policy's recommendation, as --lr was not given
    assert result.policy["sha256"] == PolicyArtifact.from_file(tmp_path / "p.safetensors").sha256
    assert len(set(result.final_sigma.values())) > 1 and result.policy_seconds_per_step > 0


def test_auto_without_a_policy_warns_and_runs_mezo(tmp_path, tiny_causal, monkeypatch):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "cache"))
    task = toy_task(tmp_path / "toy.jsonl")
    config = FinetuneConfig(model="tiny", task=str(task), steps=2, eval_every=2, batch_size=4, train_size=8,
                            dev_size=8, test_size=8, policy="auto", registry=str(tmp_path / "registry"),
                            output=str(tmp_path / "run.json"))
    splits = load_task(str(task), train_size=8, dev_size=8, test_size=8)
    with pytest.warns(PolicyWarning, match="sigma = 1"):
        result = finetune(config, loaded=tiny_causal, splits=splits, progress=False)
    assert result.policy is None and result.final_sigma == {}


@pytest.mark.parametrize("problem", ["unknown model", "fingerprint", "corrupt"])
def test_policy_errors_are_one_line(problem, tmp_path, capsys, monkeypatch, tiny_causal_dir, tiny_causal):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "cache"))
    task = toy_task(tmp_path / "toy.jsonl")
    policy_file = tmp_path / "p.safetensors"
    write_artifact(policy_file, tiny_causal, fp="ef" * 32 if problem == "fingerprint" else None)
    if problem == "corrupt":
        data = bytearray(policy_file.read_bytes())
        data[-3] ^= 0xFF
        policy_file.write_bytes(bytes(data))
    model = "no-such-org/no-such-model" if problem == "unknown model" else str(tiny_causal_dir)
    code = main(["finetune", "--model", model, "--task", str(task), "--steps", "1", "--policy", str(policy_file),
                 "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the model loader's progress bar, if any
    assert code == 2 and err.startswith("l2lzo: error:")
    assert {"unknown model": "cannot be loaded", "fingerprint": "trained for fingerprint",
            "corrupt": "sha256"}[problem] in err


def test_policy_show_prints_provenance_and_writes_a_heatmap(tmp_path, tiny_causal, tiny_causal_dir, capsys):
    write_artifact(tmp_path / "p.safetensors", tiny_causal)
    png = tmp_path / "sigma.png"
    assert main(["policy", "show", str(tmp_path / "p.safetensors"), "--model", str(tiny_causal_dir),
                 "--output", str(png)]) == 0
    out = capsys.readouterr().out
    assert "recommended lr 0.002" in out and "sigma at the start of a run, by role:" in out and "embed" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_static_gradient_baseline_is_bounded_normalised_and_runs(tmp_path, tiny_causal, label_word_examples):
    from l2lzo.profiling import gradient_profile_sigma

    closure = grouped_loss(Scorer(tiny_causal), label_word_examples)
    sigma = gradient_profile_sigma(tiny_causal.model, [closure, closure], max_ratio=4.0)
    blocks = discover_blocks(tiny_causal.model)
    assert set(sigma) == {b.name for b in blocks}
    d = torch.tensor([b.numel for b in blocks], dtype=torch.float64)
    values = torch.tensor([sigma[b.name] for b in blocks], dtype=torch.float64)
    assert float((d * values**2).sum()) == pytest.approx(float(d.sum()))
    assert 1.5 < float(values.max() / values.min()) <= 4.0 + 1e-9
    task = toy_task(tmp_path / "toy.jsonl")
    config = FinetuneConfig(model="tiny", task=str(task), steps=2, eval_every=2, batch_size=4, train_size=8,
                            dev_size=8, test_size=8, lr=1e-3, output=str(tmp_path / "run.json"))
    splits = load_task(str(task), train_size=8, dev_size=8, test_size=8)
    result = finetune(config, loaded=tiny_causal, splits=splits, progress=False, sigma_hook=lambda info: sigma)
    assert result.policy["kind"] == "sigma hook"


def _compare(tmp_path, tiny_causal_dir, *extra, policy=None):
    task = toy_task(tmp_path / "toy.jsonl")
    assert main(["finetune", "--model", str(tiny_causal_dir), "--task", str(task), "--steps", "2",
                 "--eval-every", "2", "--batch-size", "4", "--train-size", "8", "--dev-size", "8", "--test-size", "8",
                 "--policy", policy or str(tmp_path / "p.safetensors"), "--compare", "--output",
                 str(tmp_path / "c.json"), *extra]) == 0
    learned, mezo = (json.loads((tmp_path / f"c.{arm}.json").read_text()) for arm in ("policy", "sigma1"))
    assert learned["policy"]["learned"] and mezo["policy"] is None
    assert learned["config"]["seed"] == mezo["config"]["seed"]
    return learned["config"]["lr"], mezo["config"]["lr"]


def test_finetune_compare_runs_mezo_at_its_own_validated_lr(tmp_path, tiny_causal, tiny_causal_dir, capsys):
    write_artifact(tmp_path / "p.safetensors", tiny_causal, sigma1_lr=5e-3)
    assert _compare(tmp_path, tiny_causal_dir) == (2e-3, 5e-3)
    out = capsys.readouterr().out
    assert "| policy | 0.002 (policy's validation) |" in out
    assert "| sigma=1 | 0.005 (its own validation (same runs)) |" in out
    assert _compare(tmp_path, tiny_causal_dir, "--lr", "1e-3") == (1e-3, 1e-3)  # --lr: both arms
    assert "| sigma=1 | 0.001 (--lr (both arms)) |" in capsys.readouterr().out


def test_compare_with_auto_on_an_empty_registry_uses_the_shipped_policy(tmp_path, tiny_causal, tiny_causal_dir,
                                                                        monkeypatch):
    import l2lzo.policy.zoo as zoo

    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "SHIPPED_DIR", tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    write_artifact(tmp_path / "shipped" / "tiny.safetensors", tiny_causal, sigma1_lr=5e-3)
    with pytest.warns(PolicyWarning, match="no policy for .* using the policy shipped with l2lzo"):
        lrs = _compare(tmp_path, tiny_causal_dir, "--registry", str(tmp_path / "empty"), policy="auto")
    assert lrs == (2e-3, 5e-3)  # the shipped policy's lr, and MeZO at its own validated lr
    used = json.loads((tmp_path / "c.policy.json").read_text())["policy"]
    assert used["path"] == str(tmp_path / "shipped" / "tiny.safetensors")


def test_finetune_compare_with_an_older_artifact_says_both_run_at_the_policy_lr(
    tmp_path, tiny_causal, tiny_causal_dir, capsys
):
    write_artifact(tmp_path / "p.safetensors", tiny_causal)  # no recommended_lr_sigma1
    assert _compare(tmp_path, tiny_causal_dir) == (2e-3, 2e-3)
    assert "this artifact records no validated lr for sigma = 1" in capsys.readouterr().out


def test_sigma1_lr_round_trips_and_a_malformed_one_is_refused(tmp_path, tiny_causal):
    write_artifact(tmp_path / "p.safetensors", tiny_causal, sigma1_lr=4e-4)
    artifact = PolicyArtifact.from_file(tmp_path / "p.safetensors")
    assert artifact.sigma1_lr() == 4e-4 and artifact.summary()["recommended_lr_sigma1"] == 4e-4
    artifact.metadata["recommended_lr_sigma1"] = "fast"
    with pytest.raises(L2LZOError, match="malformed recommended_lr_sigma1"):
        artifact.sigma1_lr()


@pytest.mark.parametrize(("argv", "message"), [
    (["--inner-steps", "0"], "inner steps must be >= 1"),
    (["--lr-grid", "1e-5,fast"], "--lr-grid must be comma-separated numbers"),
    (["--train-tasks", "quartz", "--validation-tasks", "quartz"], "must be disjoint"),
    (["--scheme", "qlora"], "unknown scheme 'qlora'"),
])
def test_bad_meta_train_input_is_one_line(argv, message, capsys):
    assert main(["meta-train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2lzo: error:") and message in err and "\n" not in err

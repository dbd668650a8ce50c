"""One rule for lr / eps / steps and one policy resolver, for `finetune` and `finetune-batch`, over a policy file,
a local registry and a live service holding the same artifacts."""

from __future__ import annotations

import json
import warnings

import pytest
from registry_helpers import FINGERPRINT, OTHER_FINGERPRINT, make_artifact, serving

from l2lzo.batch import BatchConfig, finetune_batch
from l2lzo.cli import main
from l2lzo.client import PolicyWarning
from l2lzo.errors import L2LZOError
from l2lzo.finetune import DEFAULT_EPS, DEFAULT_STEPS, default_lr
from l2lzo.models import fingerprint, load_model
from l2lzo.policy.source import resolve_policy
from registry import Registry
from service.app import create_app

RECOMMENDED = {"lr": 0.002, "eps": 0.01, "steps": 3}  # the policy's, none of them a default
FLAGS = {"lr": 0.004, "eps": 0.02, "steps": 2}  # what a flag gives instead
SMALL = {"batch_size": 4, "train_size": 8, "dev_size": 8, "test_size": 8, "eval_every": 1}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "cache"))
    return Registry(tmp_path / "registry")


@pytest.fixture
def server(registry):
    with serving(create_app(registry, token=None)) as url:
        yield url


@pytest.fixture
def tiny_fingerprint(tiny_causal_dir) -> str:
    return fingerprint(load_model(str(tiny_causal_dir)).model)


def recommending(fp: str, model: str = "tiny-base") -> bytes:
    """A hyperparameters-only artifact for ``fp`` that recommends ``RECOMMENDED``."""
    return make_artifact(model, fingerprint=fp, recommended_lr=str(RECOMMENDED["lr"]),
                         recommended_eps=str(RECOMMENDED["eps"]), recommended_steps=str(RECOMMENDED["steps"]))


def write_task(path):
    path.write_text("".join(json.dumps({"text": f"item {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40)))
    return str(path)


def finetune_cli(capsys, tmp_path, model_dir, *argv) -> tuple[dict, str]:
    """``l2lzo finetune`` on a toy task; the results JSON and stdout."""
    out = tmp_path / "run.json"
    small = [a for k, v in SMALL.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)  # a hyperparameters-only policy runs sigma = 1
        assert main(["finetune", "--model", str(model_dir), "--task", write_task(tmp_path / "toy.jsonl"), *small,
                     "--output", str(out), *argv]) == 0
    return json.loads(out.read_text()), capsys.readouterr().out


def expected_sources(flagged: str | None, policy: bool) -> dict[str, str]:
    return {k: "flag" if k == flagged else "policy" if policy else "default" for k in ("lr", "eps", "steps")}


# --- one rule: the flag, else the policy's recommendation, else the default -------------------------------------

@pytest.mark.parametrize("setting", ["lr", "eps", "steps"])
def test_finetune_takes_a_flag_over_the_policy_and_the_policy_over_the_default(setting, tmp_path, capsys,
                                                                               tiny_causal_dir, tiny_fingerprint):
    policy = tmp_path / "p.safetensors"
    policy.write_bytes(recommending(tiny_fingerprint))
    results, out = finetune_cli(capsys, tmp_path, tiny_causal_dir, "--policy", str(policy),
                                f"--{setting}", str(FLAGS[setting]))
    wanted = {**RECOMMENDED, setting: FLAGS[setting]}
    assert {k: results["config"][k] for k in wanted} == wanted
    assert results["steps_done"] == wanted["steps"]
    sources = expected_sources(setting, policy=True)
    assert f"({', '.join(f'{k} from {v}' for k, v in sources.items())})" in out


def test_finetune_without_flags_or_policy_uses_the_defaults(tmp_path, capsys, tiny_causal_dir):
    results, out = finetune_cli(capsys, tmp_path, tiny_causal_dir, "--time-budget", "1e-9")  # 1 of 400 steps
    assert (results["config"]["lr"], results["config"]["eps"], results["config"]["steps"]) == (
        default_lr("zo-sgd", "full"), DEFAULT_EPS, DEFAULT_STEPS)
    assert "(lr from default, eps from default, steps from default); no policy" in out


def batch(model_dir, tmp_path, finetune=(), **overrides) -> dict:
    """``finetune_batch`` of one toy task; its summary."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = BatchConfig(model=str(model_dir), tasks=[write_task(tmp_path / "toy.jsonl")],
                         output_dir=str(tmp_path / "out"), finetune={**SMALL, **dict(finetune)}, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        return finetune_batch(config, progress=False, say=lambda _: None)


@pytest.mark.parametrize("setting", ["lr", "eps", "steps", None])
def test_finetune_batch_applies_the_same_rule(setting, tmp_path, tiny_causal_dir, tiny_fingerprint):
    policy = tmp_path / "p.safetensors"
    policy.write_bytes(recommending(tiny_fingerprint))
    summary = batch(tiny_causal_dir, tmp_path, policy=str(policy), **({setting: FLAGS[setting]} if setting else {}))
    wanted = {**RECOMMENDED, **({setting: FLAGS[setting]} if setting else {})}
    plan, row = summary["plan"], summary["rows"][0]
    assert {k: plan[k] for k in wanted} == wanted == {k: row[k] for k in wanted}
    assert plan["sources"] == expected_sources(setting, policy=True)


def test_finetune_batch_without_flags_or_policy_uses_the_defaults(tmp_path, tiny_causal_dir):
    summary = batch(tiny_causal_dir, tmp_path, finetune={"time_budget": 1e-9})  # 1 of 400 steps
    defaults = {"lr": default_lr("zo-sgd", "full"), "eps": DEFAULT_EPS, "steps": DEFAULT_STEPS}
    plan, row = summary["plan"], summary["rows"][0]
    assert {k: plan[k] for k in defaults} == defaults == {k: row[k] for k in defaults}
    assert plan["sources"] == expected_sources(None, policy=False)


# --- one resolver: a file, the local registry and the service -----------------------------------------------------

def test_finetune_batch_takes_a_policy_from_the_local_registry(registry, tmp_path, tiny_causal_dir,
                                                               tiny_fingerprint):
    record = registry.push(recommending(tiny_fingerprint), "tiny-base").record
    for spec in ("tiny-base", "tiny-base@1", "auto"):
        summary = batch(tiny_causal_dir, tmp_path / spec.replace("@", "_"), policy=spec,
                        registry=str(registry.root))
        policy = summary["plan"]["policy"]
        assert (policy["model"], policy["version"], policy["sha256"]) == ("tiny-base", 1, record.sha256), spec
        assert summary["plan"]["sources"] == expected_sources(None, policy=True)


@pytest.mark.parametrize("backend", ["registry", "server"])
def test_finetune_policy_auto_finds_a_registered_policy_and_applies_it(backend, registry, server, tmp_path, capsys,
                                                                      tiny_causal_dir, tiny_fingerprint):
    registry.push(make_artifact("another-arch", fingerprint=OTHER_FINGERPRINT), "another-arch")
    record = registry.push(recommending(tiny_fingerprint), "tiny-base").record
    where = ["--registry", str(registry.root)] if backend == "registry" else ["--server", server]
    results, out = finetune_cli(capsys, tmp_path, tiny_causal_dir, "--policy", "auto", *where)
    assert (results["policy"]["model"], results["policy"]["sha256"]) == ("tiny-base", record.sha256)
    assert {k: results["config"][k] for k in RECOMMENDED} == RECOMMENDED and results["steps_done"] == 3
    assert "policy tiny-base@1" in out and "eps from policy" in out


NOWHERE = "ef" * 32  # a fingerprint no policy was trained for

# (spec, model id of the fine-tuned model, its fingerprint) -> what both backends must answer: "model@version",
# None (sigma = 1, with a PolicyWarning), or ("error", text): an L2LZOError saying that.
CASES = [
    ("auto", "base-model", FINGERPRINT, "base-model@2"),
    ("auto", "my-org/base-model-finetuned", FINGERPRINT, "base-model@2"),  # a derivative: by fingerprint
    ("auto", None, FINGERPRINT, "base-model@2"),  # a local folder: by fingerprint only
    ("auto", "renamed", FINGERPRINT, "base-model@2"),  # its own entry is another architecture's: by fingerprint
    ("auto", "renamed", NOWHERE, None),
    ("auto", "nobody", NOWHERE, None),
    ("base-model", None, FINGERPRINT, "base-model@2"),
    ("base-model@1", "nobody", FINGERPRINT, "base-model@1"),
    ("renamed", "renamed", FINGERPRINT, ("error", "trained for fingerprint")),  # named: refused, not replaced
    ("base-model@7", None, FINGERPRINT, ("error", "has no version 7")),
    ("nobody", None, FINGERPRINT, ("error", "no policy nobody@latest")),
]


def answer(spec: str, model_id: str | None, fp: str, **where) -> tuple:
    """What ``resolve_policy`` gives, as comparable values (the bytes included)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            artifact = resolve_policy(spec, model_id=model_id, fingerprint=fp, **where)
    except L2LZOError as exc:
        return ("error", str(exc))
    warned = [str(w.message) for w in caught if issubclass(w.category, PolicyWarning)
              and "hyperparameters only" not in str(w.message)]
    if artifact is None:
        return (None, bool(warned))
    return (f"{artifact.model}@{artifact.version}", artifact.sha256, artifact.fingerprint,
            artifact.path.read_bytes(), bool(warned))


def test_the_local_registry_and_the_service_give_the_same_answer(registry, server):
    registry.push(make_artifact("base-model", seed=1), "base-model")
    registry.push(make_artifact("base-model", seed=2), "base-model")
    registry.push(make_artifact("renamed", seed=3, fingerprint=OTHER_FINGERPRINT), "renamed")
    for spec, model_id, fp, wanted in CASES:
        local = answer(spec, model_id, fp, registry_root=str(registry.root))
        served = answer(spec, model_id, fp, server=server)
        case = (spec, model_id, fp[:4])
        if not isinstance(wanted, tuple):
            assert local == served, case
            assert local[0] == wanted, case
            # A warning exactly where a user may expect another policy: none found, or the model's own passed over.
            assert local[-1] == (wanted is None or model_id == "renamed"), case
        else:
            assert local[0] == served[0] == "error", (case, local, served)
            assert wanted[1] in local[1] and wanted[1] in served[1], (case, local[1], served[1])


def test_auto_falls_back_to_the_shipped_policy_when_neither_source_has_one(registry, server, tmp_path,
                                                                           monkeypatch):
    import l2lzo.policy.zoo as zoo

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "other.safetensors").write_bytes(make_artifact("other", seed=5, fingerprint=OTHER_FINGERPRINT))
    (shipped / "base.safetensors").write_bytes(make_artifact("base-model", seed=4))
    monkeypatch.setattr(zoo, "SHIPPED_DIR", shipped)
    for where in ({"registry_root": str(registry.root)}, {"server": server}):
        with pytest.warns(PolicyWarning, match="using the policy shipped with l2lzo"):
            artifact = resolve_policy("auto", model_id="base-model", fingerprint=FINGERPRINT, **where)
        assert artifact.path == shipped / "base.safetensors" and artifact.fingerprint == FINGERPRINT
        # No shipped policy fits this fingerprint: sigma = 1, as before.
        assert answer("auto", "nobody", NOWHERE, **where) == (None, True)
    # A policy in the registry is preferred to the shipped one, and a named policy never falls back.
    registry.push(make_artifact("base-model", seed=1), "base-model")
    assert answer("auto", "base-model", FINGERPRINT, server=server)[0] == "base-model@1"
    assert answer("nobody", None, FINGERPRINT, registry_root=str(registry.root))[0] == "error"
    (shipped / "base.safetensors").write_bytes(b"not a policy")
    assert answer("auto", "base-model", FINGERPRINT, registry_root=str(registry.root))[0] == "base-model@1"
    with pytest.raises(L2LZOError, match=r"base\.safetensors is not a valid policy"):
        resolve_policy("auto", model_id="x", fingerprint="ab" * 32, registry_root=str(tmp_path / "empty"))

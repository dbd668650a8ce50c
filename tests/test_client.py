"""The policy client against a real uvicorn server: fetch a version or a fingerprint, ETag cache, offline, errors;
and finetune-batch resolving its plan from a live server (which policy is chosen: tests/test_policy_source.py)."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from registry_helpers import FINGERPRINT, OTHER_FINGERPRINT, make_artifact, serving

from l2lzo.batch import BatchConfig, finetune_batch
from l2lzo.client import PolicyClient, PolicyWarning
from l2lzo.errors import L2LZOError
from l2lzo.models import fingerprint, load_model
from registry import Registry
from service.app import create_app


class Recording(httpx.HTTPTransport):
    """A real transport that remembers the status of every response."""

    def __init__(self):
        super().__init__()
        self.statuses: list[int] = []

    def handle_request(self, request):
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry")


@pytest.fixture
def server(registry):
    with serving(create_app(registry, token=None)) as url:
        yield url


def client_for(url, tmp_path, transport=None) -> PolicyClient:
    return PolicyClient(url, cache=tmp_path / "cache", transport=transport)


def test_fetch_verifies_caches_and_revalidates_by_etag(registry, server, tmp_path):
    first = registry.push(make_artifact("smollm2-135m", seed=1), "smollm2-135m").record
    transport = Recording()
    with client_for(server, tmp_path, transport) as client:
        artifact = client.fetch_version("smollm2-135m")
        assert (artifact.model, artifact.version, artifact.sha256) == ("smollm2-135m", 1, first.sha256)
        assert artifact.recommended() == {"lr": 0.001, "eps": 0.001, "steps": 500}
        assert hashlib.sha256(artifact.path.read_bytes()).hexdigest() == first.sha256
        again = client.fetch_version("smollm2-135m")
        assert again.sha256 == first.sha256
        second = registry.push(make_artifact("smollm2-135m", seed=2, recommended_lr="0.002"), "smollm2-135m").record
        newest = client.fetch_version("smollm2-135m")
    assert transport.statuses == [200, 304, 200]
    assert (newest.version, newest.sha256, newest.recommended()["lr"]) == (2, second.sha256, 0.002)


def test_a_fingerprint_finds_the_policy_of_any_model_trained_for_it(registry, server, tmp_path):
    base = registry.push(make_artifact("smollm2-135m"), "smollm2-135m").record
    with client_for(server, tmp_path) as client:
        artifact = client.fetch_by_fingerprint(FINGERPRINT)
    assert (artifact.model, artifact.version, artifact.sha256) == ("smollm2-135m", 1, base.sha256)


def test_a_model_or_fingerprint_without_a_policy_is_none_not_an_error(registry, server, tmp_path):
    registry.push(make_artifact("smollm2-135m"), "smollm2-135m")
    with client_for(server, tmp_path) as client:
        assert client.fetch_version("minilm-l6") is None
        assert client.fetch_by_fingerprint(OTHER_FINGERPRINT) is None


def test_server_down_uses_the_cache_with_a_warning_and_fails_without_one(registry, tmp_path):
    record = registry.push(make_artifact("smollm2-135m"), "smollm2-135m").record
    with serving(create_app(registry, token=None)) as url, client_for(url, tmp_path) as client:
        client.fetch_version("smollm2-135m")
        client.fetch_by_fingerprint(FINGERPRINT)
    with client_for(url, tmp_path) as client:  # the server is gone now
        with pytest.warns(PolicyWarning, match="cannot reach .* using the cached policy smollm2-135m@1"):
            cached = client.fetch_version("smollm2-135m")
        assert cached.sha256 == record.sha256
        with pytest.warns(PolicyWarning, match="using the cached policy"):
            assert client.fetch_by_fingerprint(FINGERPRINT).sha256 == record.sha256
        with pytest.raises(L2LZOError, match="no cached policy for fingerprint"):
            client.fetch_by_fingerprint(OTHER_FINGERPRINT)
        with pytest.raises(L2LZOError, match="no cached policy for 'minilm-l6'"):
            client.fetch_version("minilm-l6")


def test_a_damaged_cache_entry_is_fetched_again(registry, server, tmp_path):
    registry.push(make_artifact("smollm2-135m"), "smollm2-135m")
    transport = Recording()
    with client_for(server, tmp_path, transport) as client:
        artifact = client.fetch_version("smollm2-135m")
        artifact.path.write_bytes(b"bit rot")
        again = client.fetch_version("smollm2-135m")
    assert transport.statuses == [200, 200]
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256


def test_a_download_that_does_not_match_its_etag_is_rejected(tmp_path):
    data = make_artifact("smollm2-135m")

    def handler(request):
        return httpx.Response(200, content=data[:-1] + b"\0", headers={"ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                                                                       "X-L2LZO-Version": "1"})

    with client_for("http://policies.test", tmp_path, httpx.MockTransport(handler)) as client, \
            pytest.raises(L2LZOError, match="corrupt"):
        client.fetch_version("smollm2-135m")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_a_missing_pinned_version_is_an_error_not_a_fallback(registry, server, tmp_path):
    registry.push(make_artifact("smollm2-135m"), "smollm2-135m")
    with client_for(server, tmp_path) as client, pytest.raises(L2LZOError, match=r"404|no version|not found"):
        client.fetch_version("smollm2-135m", version=7)


def test_finetune_batch_applies_the_served_policy_recommendations(registry, server, tiny_causal_dir, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "l2lzo-cache"))
    tiny_fingerprint = fingerprint(load_model(str(tiny_causal_dir)).model)
    record = registry.push(make_artifact("tiny-base", fingerprint=tiny_fingerprint, recommended_lr="0.002",
                                         recommended_eps="0.01", recommended_steps="3"), "tiny-base").record
    task = tmp_path / "toy.jsonl"
    task.write_text("".join(json.dumps({"text": f"item {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40)))
    config = BatchConfig(model=str(tiny_causal_dir), tasks=[str(task)], server=server, eps=0.005,
                         output_dir=str(tmp_path / "out"),
                         finetune={"batch_size": 4, "train_size": 8, "dev_size": 8, "test_size": 8, "eval_every": 3})
    lines = []
    summary = finetune_batch(config, progress=False, say=lines.append)
    plan = summary["plan"]
    assert plan["policy"]["sha256"] == record.sha256 and plan["policy"]["model"] == "tiny-base"
    assert (plan["lr"], plan["eps"], plan["steps"]) == (0.002, 0.005, 3)
    assert plan["sources"] == {"lr": "policy", "eps": "flag", "steps": "policy"}
    assert plan["perturbation"] == "sigma = 1 (MeZO)"
    assert summary["rows"][0]["steps"] == 3 and summary["rows"][0]["lr"] == 0.002
    assert "policy tiny-base@1" in lines[0] and "perturbation sigma = 1 (MeZO)" in lines[0]
    assert "policy `tiny-base@1`" in (tmp_path / "out" / "results.md").read_text()


def test_finetune_batch_runs_a_served_learned_policy_and_keys_resume_on_its_sha256(registry, server, tiny_causal_dir,
                                                                                  tmp_path, monkeypatch):
    from test_policy import trained_looking

    from l2lzo.policy.network import PerturbationPolicy
    from meta_train.artifact import build_policy_artifact
    from meta_train.config import MetaTrainConfig

    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path / "l2lzo-cache"))
    tiny_fingerprint = fingerprint(load_model(str(tiny_causal_dir)).model)

    def push(seed: int):
        policy = trained_looking(PerturbationPolicy(), seed, 0.5)
        data = build_policy_artifact(policy, MetaTrainConfig(model="tiny-base"), fingerprint=tiny_fingerprint,
                                     recommended_lr=2e-3, metrics={})
        return registry.push(data, "tiny-base").record

    first = push(1)
    task = tmp_path / "toy.jsonl"
    task.write_text("".join(json.dumps({"text": f"item {i}", "label": "ab"[i % 2]}) + "\n" for i in range(40)))
    config = BatchConfig(model=str(tiny_causal_dir), tasks=[str(task)], server=server, steps=2,
                         output_dir=str(tmp_path / "out"),
                         finetune={"batch_size": 4, "train_size": 8, "dev_size": 8, "test_size": 8, "eval_every": 2})
    summary = finetune_batch(config, progress=False, say=lambda _: None)
    assert summary["plan"]["perturbation"].startswith("learned policy tiny-base@1")
    results = json.loads((tmp_path / "out" / "tasks" / "toy.json").read_text())
    assert results["policy"]["sha256"] == first.sha256 and results["final_sigma"]
    assert finetune_batch(config, progress=False, say=lambda _: None)["rows"][0]["status"] == "skipped (done)"
    push(2)  # a new latest version: the finished task was made with another policy, so it is not reused
    with pytest.raises(L2LZOError, match=r"different settings \(policy\)"):
        finetune_batch(config, progress=False, say=lambda _: None)

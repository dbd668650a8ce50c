"""``l2lzo registry ...`` (registry/cli.py), driven through a parser built like l2lzo's own."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from registry_helpers import make_artifact

from registry import InvalidArtifact, NotFound, Registry, RegistryError
from registry.cli import register


def _run(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="l2lzo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    args.func(args)


@pytest.fixture
def root(tmp_path):
    return str(tmp_path / "registry")


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.safetensors"
    path.write_bytes(make_artifact("HuggingFaceTB/SmolLM2-135M", seed=1))
    return path


def test_push_list_show_pull(root, policy_file, tmp_path, capsys):
    _run("registry", "--registry", root, "list")
    assert "no policies in registry" in capsys.readouterr().out
    newer = tmp_path / "newer.safetensors"
    newer.write_bytes(make_artifact("HuggingFaceTB/SmolLM2-135M", seed=2))
    _run("registry", "--registry", root, "push", str(policy_file), "--model", "HuggingFaceTB/SmolLM2-135M")
    _run("registry", "--registry", root, "push", str(policy_file), "--model", "huggingfacetb/smollm2-135m")
    _run("registry", "--registry", root, "push", str(newer), "--model", "huggingfacetb/smollm2-135m")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pushed huggingfacetb/smollm2-135m version 1 (")
    assert out[1].startswith("huggingfacetb/smollm2-135m version 1 in ") and out[1].endswith(": nothing pushed")
    assert out[2].startswith("pushed huggingfacetb/smollm2-135m version 2 (")

    _run("registry", "--registry", root, "list")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["MODEL", "LATEST", "VERSIONS", "CREATED", "SIZE"]
    assert table[1].split()[:3] == ["huggingfacetb/smollm2-135m", "2", "2"]
    _run("registry", "--registry", root, "list", "--json")
    listed = json.loads(capsys.readouterr().out)
    assert [(m["model"], m["latest"], m["count"]) for m in listed] == [("huggingfacetb/smollm2-135m", 2, 2)]

    _run("registry", "--registry", root, "show", "HuggingFaceTB/SmolLM2-135M")
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[:3] == ["VERSION", "CREATED", "SIZE"] and len(rows) == 3
    _run("registry", "--registry", root, "show", "huggingfacetb/smollm2-135m@1", "--json")
    record = json.loads(capsys.readouterr().out)
    assert record["version"] == 1 and record["metadata"]["recommended_steps"] == "500"
    _run("registry", "--registry", root, "show", "huggingfacetb/smollm2-135m@latest")
    details = capsys.readouterr().out
    assert "version" in details and "fingerprint" in details and "feature_spec" in details

    _run("registry", "--registry", root, "pull", "huggingfacetb/smollm2-135m@1", "-o", str(tmp_path / "out.st"))
    assert (tmp_path / "out.st").read_bytes() == policy_file.read_bytes()
    target = tmp_path / "pulled"
    target.mkdir()
    _run("registry", "--registry", root, "pull", "huggingfacetb/smollm2-135m", "-o", str(target))
    assert (target / "huggingfacetb--smollm2-135m-v2.safetensors").read_bytes() == newer.read_bytes()
    assert [p.name for p in target.iterdir()] == ["huggingfacetb--smollm2-135m-v2.safetensors"]  # no temp left

    _run("registry", "--registry", root, "verify")
    assert "1 models, 2 versions, no problems" in capsys.readouterr().out


def test_user_errors_raise_registry_error(root, policy_file, tmp_path, capsys):
    with pytest.raises(RegistryError, match=r"cannot read .*missing\.safetensors: No such file"):
        _run("registry", "--registry", root, "push", str(tmp_path / "missing.safetensors"), "--model", "m")
    with pytest.raises(InvalidArtifact, match="base_model is 'huggingfacetb/smollm2-135m', not 'minilm-l6'"):
        _run("registry", "--registry", root, "push", str(policy_file), "--model", "minilm-l6")
    with pytest.raises(NotFound):
        _run("registry", "--registry", root, "pull", "minilm-l6")
    with pytest.raises(NotFound):
        _run("registry", "--registry", root, "show", "minilm-l6")
    with pytest.raises(RegistryError, match="version must be a positive integer"):
        _run("registry", "--registry", root, "show", "minilm-l6@first")
    big = tmp_path / "big.safetensors"
    big.write_bytes(b"\0" * (16 * 1024 * 1024 + 1))
    with pytest.raises(InvalidArtifact, match="is 16777217 bytes, limit 16777216"):
        _run("registry", "--registry", root, "push", str(big), "--model", "m")


def test_verify_fails_on_problems(root, policy_file, capsys):
    record = Registry(root).push(policy_file.read_bytes(), "huggingfacetb/smollm2-135m").record
    stored = Path(root) / "models" / "huggingfacetb--smollm2-135m" / "v000001.safetensors"
    stored.write_bytes(stored.read_bytes()[:-3])
    with pytest.raises(RegistryError, match="1 problem in registry"):
        _run("registry", "--registry", root, "verify")
    assert "v000001.safetensors" in capsys.readouterr().out
    assert record.version == 1


def test_verify_repair_removes_stale_temp_files(root, policy_file, capsys):
    Registry(root).push(policy_file.read_bytes(), "huggingfacetb/smollm2-135m")
    temp = Path(root) / "models" / "huggingfacetb--smollm2-135m" / ".tmp-0123456789abcdef"
    temp.write_bytes(b"left by a killed push")
    with pytest.raises(RegistryError, match="1 problem in registry"):
        _run("registry", "--registry", root, "verify")
    assert "stale temp file" in capsys.readouterr().out and temp.exists()
    _run("registry", "--registry", root, "verify", "--repair")
    out = capsys.readouterr().out
    assert f"removed {temp} (left by an interrupted push)" in out and "1 versions, no problems" in out
    assert not temp.exists()


def test_default_root_from_environment(tmp_path, monkeypatch, policy_file, capsys):
    monkeypatch.setenv("L2LZO_REGISTRY", str(tmp_path / "env-registry"))
    _run("registry", "push", str(policy_file), "--model", "huggingfacetb/smollm2-135m")
    assert str(tmp_path / "env-registry") in capsys.readouterr().out
    assert Registry(tmp_path / "env-registry").models() == ["huggingfacetb/smollm2-135m"]


def test_push_shipped_seeds_every_shipped_policy_once(root, tmp_path, capsys, monkeypatch):
    import l2lzo.policy.zoo as zoo

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "a.safetensors").write_bytes(make_artifact("HuggingFaceTB/SmolLM2-135M", seed=1))
    (shipped / "b.safetensors").write_bytes(make_artifact("sentence-transformers/all-MiniLM-L6-v2", seed=2))
    monkeypatch.setattr(zoo, "SHIPPED_DIR", shipped)
    _run("registry", "--registry", root, "push", "--shipped")
    assert capsys.readouterr().out.count("pushed ") == 2
    registry = Registry(root)
    assert [s.latest.model for s in registry.summaries()] == ["huggingfacetb/smollm2-135m",
                                                              "sentence-transformers/all-minilm-l6-v2"]
    _run("registry", "--registry", root, "push", "--shipped")  # seeding twice stores nothing new
    assert capsys.readouterr().out.count("nothing pushed") == 2
    assert [s.count for s in registry.summaries()] == [1, 1]


@pytest.mark.parametrize("argv, message", [
    (["--shipped", "FILE"], "FILE --model MODEL, or --shipped"),
    ([], "FILE --model MODEL, or --shipped"),
    (["FILE"], "needs --model"),
])
def test_push_needs_a_file_and_model_or_shipped(root, policy_file, argv, message):
    argv = [str(policy_file) if a == "FILE" else a for a in argv]
    with pytest.raises(RegistryError, match=message):
        _run("registry", "--registry", root, "push", *argv)


def test_the_shipped_policies_are_valid_artifacts():
    from l2lzo.policy.zoo import shipped_files
    from registry import parse_artifact

    paths = shipped_files()
    assert paths, "l2lzo ships no policy (README, 'Shipped policies')"
    for path in paths:
        metadata = parse_artifact(path.read_bytes()).metadata
        assert metadata["base_model"] and metadata["fingerprint"] and "recommended_lr_sigma1" in metadata, path

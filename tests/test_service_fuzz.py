"""Schemathesis against a live ``python -m service`` (= ``l2lzo serve``): every check, every phase, over the
OpenAPI schema the server publishes. Fails on any 5xx, any response that breaks the schema, and any request the
schema calls valid (or invalid) that the server treats the other way (tests/schemathesis.toml lists the two
statuses the schema cannot express). A small budget with a fixed seed by default; a larger, random one under
``-m slow``."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from registry_helpers import make_artifact, service_process

from registry import Registry

TOKEN = "fuzz-upload-token-0123456789"
CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _fuzz(tmp_path: Path, max_examples: int, seed: int) -> None:
    root = tmp_path / "registry"
    # The schema's examples name this model and its fingerprint, so the examples phase reaches real files.
    Registry(root).push(make_artifact("smollm2-135m"), "smollm2-135m")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    log = tmp_path / "server.log"
    with service_process(log, "--registry", str(root), "--token-file", str(token_file), "--max-upload-bytes",
                         "65536", "--log-level", "warning") as (url, _):
        result = subprocess.run(
            [str(SCHEMATHESIS), "--config-file", str(CONFIG), "--no-color", "run", f"{url}/openapi.json",
             "--checks", "all", "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
             "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "30"],
            cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"seed {seed}\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


def test_schemathesis_small(tmp_path):
    _fuzz(tmp_path, max_examples=10, seed=12)


@pytest.mark.slow
def test_schemathesis_large(tmp_path):
    _fuzz(tmp_path, max_examples=300, seed=random.randrange(2**32))

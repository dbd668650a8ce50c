"""Test policy artifacts, a loopback uvicorn server, and helpers that run in child processes.

Kept out of conftest.py so that spawned worker processes (which import this module by name) and the load
benchmark can use it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import numpy as np
import uvicorn

from registry import Registry, build_artifact

FINGERPRINT = "ab" * 32
OTHER_FINGERPRINT = "cd" * 32


def policy_metadata(model: str = "smollm2-135m", **overrides: str) -> dict[str, str]:
    """Valid metadata for ``model`` (``schema_version``, ``created_at`` and ``sha256`` left to the builder)."""
    metadata = {
        "base_model": model,
        "fingerprint": FINGERPRINT,
        "feature_spec": json.dumps({"features": ["role", "depth", "log_size"], "roles": ["q", "k", "v"]}),
        "recommended_lr": "0.001",
        "recommended_eps": "0.001",
        "recommended_steps": "500",
        "training_config": json.dumps({"tasks": ["polarity"], "meta_lr": 0.01}),
        "metrics": json.dumps({"heldout_loss_gap": -0.05}),
    }
    metadata.update(overrides)
    return metadata


def policy_tensors(seed: int = 0, numbers: int = 64) -> dict[str, np.ndarray]:
    """A small policy: a role embedding and an MLP, ``numbers`` float32 values in the first layer."""
    rng = np.random.default_rng(seed)
    return {
        "role_embedding": rng.standard_normal((8, 4)).astype(np.float32),
        "mlp.0.weight": rng.standard_normal(numbers).astype(np.float32),
        "mlp.0.bias": np.zeros(4, dtype=np.float32),
    }


def make_artifact(model: str = "smollm2-135m", *, seed: int = 0, numbers: int = 64, **metadata: str) -> bytes:
    """Valid artifact bytes for ``model``; keyword arguments override metadata values."""
    return build_artifact(policy_tensors(seed, numbers), policy_metadata(model, **metadata))


def raw_safetensors(header: dict, data: bytes, *, fix_sha: bool = True) -> bytes:
    """Safetensors bytes from an arbitrary header (possibly invalid); by default ``sha256`` matches ``data``."""
    header = dict(header)
    if fix_sha and isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = {**header["__metadata__"], "sha256": hashlib.sha256(data).hexdigest()}
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def push_worker(root: str, model: str, seed: int) -> tuple[int, str]:
    """Push a distinct artifact (in a child process); returns (version, whole-file sha256 pushed)."""
    data = make_artifact(model, seed=seed, numbers=256)
    record = Registry(root).push(data, model)
    return record.version, hashlib.sha256(data).hexdigest()


def wait_at_barrier(barrier) -> None:
    """Process-pool initializer: hold every worker until all have started, so their pushes truly overlap."""
    barrier.wait(timeout=120)


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` on a free loopback port in a background thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

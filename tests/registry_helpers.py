"""Test policy artifacts, a loopback uvicorn server, and helpers that run in child processes.

Kept out of conftest.py so that spawned worker processes (which import this module by name) and the load
benchmark can use it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import uvicorn

from registry import Registry, build_artifact
from service.server import ServiceConfig

REPO = Path(__file__).resolve().parents[1]
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
    record, _ = Registry(root).push(data, model)
    return record.version, hashlib.sha256(data).hexdigest()


def wait_at_barrier(barrier) -> None:
    """Process-pool initializer: hold every worker until all have started, so their pushes truly overlap."""
    barrier.wait(timeout=120)


@contextlib.contextmanager
def serving(app, **limits: float) -> Iterator[str]:
    """Run ``app`` as ``l2lzo serve`` does (``ServiceConfig``; ``limits`` override its timeouts and limits) on a
    free loopback port in a background thread; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(ServiceConfig(app, log_level="warning", access_log=False, **limits))
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


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def service_process(log: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m service *options`` (the same as ``l2lzo serve``) on a free loopback port, without the token
    variable in its environment; yields (base URL, process) once ``/healthz`` answers. Stopped with SIGINT on
    exit; its output goes to ``log``."""
    import httpx  # here: the spawned push workers import this module, and httpx would add 0.13 s to each start

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("L2LZO_REGISTRY_TOKEN", None)
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), *options], cwd=REPO, env=env,
                                  stdout=output, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=url, timeout=5) as http:
                while True:
                    try:
                        http.get("/healthz").raise_for_status()
                        break
                    except httpx.TransportError:
                        assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                        time.sleep(0.1)
            yield url, server
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=30)


# The child pushes an artifact; the patched step tells the parent (through a pipe) that the push is under way, then
# blocks until it is killed. "write": after the first 1 MiB chunk of the temp file; "fsync": after the whole temp
# file is written, before it is published.
_STOPPING_PUSH = """
import os, sys, time
from pathlib import Path
from registry import Registry
root, artifact, model, ready, hook = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
real_write, real = os.write, getattr(os, hook)
def stop_here(*args):
    real(*args)
    real_write(ready, b"1")
    time.sleep(600)
setattr(os, hook, stop_here)
Registry(root).push(artifact.read_bytes(), model)
"""


@contextlib.contextmanager
def push_stopped_midway(root: Path, artifact: Path, model: str, hook: str) -> Iterator[subprocess.Popen]:
    """A child process pushing ``artifact`` to ``root``, stopped inside ``os.<hook>`` ("write" or "fsync") while
    it holds the model's lock and its temp file exists; yields it, then SIGKILLs it (a crash mid-push)."""
    ready_read, ready_write = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _STOPPING_PUSH, str(root), str(artifact), model, str(ready_write),
                              hook], pass_fds=(ready_write,), env=env, cwd=REPO)
    os.close(ready_write)
    try:
        readable, _, _ = select.select([ready_read], [], [], 60)
        assert readable and os.read(ready_read, 1) == b"1", "the child never started writing"
        yield child
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        os.close(ready_read)

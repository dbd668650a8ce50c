"""The hermetic guard itself: a fast test that reads the real cache or reaches the network is caught."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import hermetic
import pytest

from l2lzo.paths import cache_dir


def test_fast_tests_get_their_own_caches() -> None:
    real = hermetic.guard().roots
    assert all(not str(Path(os.environ[name]).resolve()).startswith(tuple(real)) for name in hermetic.ISOLATED_ENV)
    assert str(cache_dir()) == os.environ["L2LZO_CACHE_DIR"]


def test_reading_the_real_cache_is_caught() -> None:
    guard = hermetic.guard()
    target = Path(guard.roots[0]) / "data" / "polarity.jsonl"
    with pytest.raises(hermetic.HermeticityError, match="touched the real cache"):
        target.open("rb")
    assert guard.violations.pop() == f"touched the real cache: {target}"
    guard.active = True  # the hook switched itself off to report; this test goes on guarded
    with pytest.raises(hermetic.HermeticityError):
        os.listdir(guard.roots[0])
    guard.violations.pop()
    guard.active = True


def test_reaching_the_network_is_caught() -> None:
    guard = hermetic.guard()
    with pytest.raises(hermetic.HermeticityError, match=r"beyond this machine: pypi\.org"):
        socket.getaddrinfo("pypi.org", 443)
    guard.violations.pop()
    guard.active = True
    with socket.socket() as sock, pytest.raises(hermetic.HermeticityError, match=r"203\.0\.113\.7"):
        sock.connect(("203.0.113.7", 443))  # TEST-NET-3: never routed
    guard.violations.pop()
    guard.active = True


def test_loopback_and_the_temporary_cache_are_allowed(tmp_path: Path) -> None:
    (cache_dir() / "x").parent.mkdir(parents=True, exist_ok=True)
    (cache_dir() / "x").write_text("ok")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert not hermetic.guard().violations

"""The hermetic guard itself: a fast test that reads the real cache or reaches the network is caught."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import hermetic
import huggingface_hub.constants  # imported before any test runs: its cache paths were read from the session's env
import pytest

from l2lzo.paths import cache_dir


def test_fast_tests_get_their_own_caches() -> None:
    real = hermetic.guard().roots
    assert all(not str(Path(os.environ[name]).resolve()).startswith(tuple(real)) for name in hermetic.ISOLATED_ENV)
    assert str(cache_dir()) == os.environ["L2LZO_CACHE_DIR"]


_EARLIER: list[dict[str, Path]] = []


@pytest.mark.parametrize("turn", [0, 1])
def test_every_fast_test_starts_with_empty_caches_of_its_own(turn: int) -> None:
    """What one test writes to a cache, registry or HF folder, the next one cannot see; HF libraries imported
    before the test follow it too (they read their folders only once, at import)."""
    hf_home = Path(os.environ["HF_HOME"])
    folders = {"cache": cache_dir(), "registry": Path(os.environ["L2LZO_REGISTRY"]), "hf home": hf_home,
               "hf hub": Path(huggingface_hub.constants.HF_HUB_CACHE),
               "hf token": Path(huggingface_hub.constants.HF_TOKEN_PATH).parent}
    assert folders["hf hub"] == hf_home / "hub" and folders["hf token"] == hf_home
    assert not [name for name in hermetic.HF_REDIRECTS if name in os.environ]
    for name, folder in folders.items():
        assert not folder.exists() or not any(folder.iterdir()), (name, folder)
    if _EARLIER:
        assert all(folders[name] != before for name, before in _EARLIER[-1].items())
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"written-by-turn-{turn}").write_text("x")
    _EARLIER.append(folders)


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


@pytest.mark.smoke
def test_real_data_tests_keep_only_the_real_cache() -> None:
    """A smoke or slow test reads the real l2lzo cache (models, prepared data) and nothing else that is real."""
    roots = hermetic.guard().roots
    assert str(cache_dir().resolve()) == roots[0]
    for name in set(hermetic.ISOLATED_ENV) - set(hermetic.REAL_DATA_ENV):
        assert not str(Path(os.environ[name]).resolve()).startswith(tuple(roots)), name

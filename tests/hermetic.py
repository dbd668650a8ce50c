"""A guard that fails a fast test which touches the user's real caches or the network.

The default (fast) run must pass on a bare machine, so it may not depend on what this machine has cached:
``isolate`` points every cache l2lzo and its libraries use at a temporary folder, and an audit hook
(``sys.addaudithook``: it sees every ``open``, ``os.listdir``, ``os.scandir`` and socket call of this process)
records and refuses any access under the real cache roots and any connection beyond this machine. The
roots are the ones in force when the test session starts, before any test changes the environment.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from l2lzo.paths import cache_dir

# Environment variables that name a cache or data folder, and the sub-folder of the test's tmp_path each gets.
ISOLATED_ENV = {
    "L2LZO_CACHE_DIR": "l2lzo-cache",
    "L2LZO_REGISTRY": "l2lzo-registry",
    "XDG_CACHE_HOME": "xdg-cache",
    "XDG_DATA_HOME": "xdg-data",
    "XDG_CONFIG_HOME": "xdg-config",
    "HF_HOME": "hf-home",
    "MPLCONFIGDIR": "matplotlib",
}


# Variables that move one HF cache (or the token) away from HF_HOME: pointing HF_HOME at a temporary folder does
# not isolate a test from the caches these name, so the session drops them (and guards the folders they named).
HF_REDIRECTS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE",
                "HF_XET_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "HF_MODULES_CACHE", "HF_TOKEN_PATH",
                "HF_TOKEN")
# The HF libraries read their cache folders once, at import: per test, the ones already imported are pointed at
# the test's own HF home (module, attribute, folder under that home).
HF_CACHE_ATTRIBUTES = (
    ("huggingface_hub.constants", "HF_HOME", ""),
    ("huggingface_hub.constants", "HF_HUB_CACHE", "hub"),
    ("huggingface_hub.constants", "HUGGINGFACE_HUB_CACHE", "hub"),
    ("huggingface_hub.constants", "HF_ASSETS_CACHE", "assets"),
    ("huggingface_hub.constants", "HF_XET_CACHE", "xet"),
    ("huggingface_hub.constants", "HF_TOKEN_PATH", "token"),
    ("huggingface_hub.constants", "HF_STORED_TOKENS_PATH", "stored_tokens"),
    ("datasets.config", "HF_CACHE_HOME", ""),
    ("datasets.config", "HF_DATASETS_CACHE", "datasets"),
    ("datasets.config", "HF_MODULES_CACHE", "modules"),
)


class HermeticityError(AssertionError):
    """A fast test read the real cache or reached the network."""


def real_roots() -> list[Path]:
    """The folders a fast test must not touch: l2lzo's real cache and registry, the HF cache."""
    home = Path.home()
    xdg_data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    xdg_cache = Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache")
    roots = [cache_dir(), Path(os.environ.get("L2LZO_REGISTRY") or xdg_data / "l2lzo" / "registry"),
             Path(os.environ.get("HF_HOME") or xdg_cache / "huggingface")]
    roots += [Path(os.environ[name]) for name in HF_REDIRECTS if name != "HF_TOKEN" and os.environ.get(name)]
    return [r.expanduser().resolve() for r in roots]


def _own_addresses() -> set[str]:
    names = {"127.0.0.1", "::1", "0.0.0.0", "::"}
    with contextlib.suppress(OSError):
        names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    return names


class Guard:
    """The audit hook's state: off between tests and for slow/smoke tests, on for fast ones."""

    def __init__(self, roots: list[Path]):
        self.roots = [str(r) for r in roots]
        self.own = _own_addresses()
        self.active = False
        self.violations: list[str] = []

    def _path_event(self, path: object) -> str | None:
        if isinstance(path, int) or path is None:
            return None
        try:
            text = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return None
        for root in self.roots:
            if text == root or text.startswith(root + os.sep):
                return f"touched the real cache: {text}"
        return None

    def _address_event(self, sock: object, address: object) -> str | None:
        if getattr(sock, "family", None) == socket.AF_UNIX or getattr(sock, "type", None) == socket.SOCK_DGRAM:
            return None  # a local socket, or a UDP "connect" (sends nothing; Ray uses one to find its own IP)
        host = address[0] if isinstance(address, tuple) and address else address
        return self._host_event(host)

    def _host_event(self, host: object) -> str | None:
        if host is None or not isinstance(host, str | bytes):
            return None
        host = os.fsdecode(host) if isinstance(host, bytes) else host
        if host in self.own or host == "localhost":
            return None
        try:
            if ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            pass
        return f"reached beyond this machine: {host}"

    def __call__(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event in {"open", "os.listdir", "os.scandir"}:
            problem = self._path_event(args[0] if args else None)
        elif event == "socket.connect":
            problem = self._address_event(*args[:2])
        elif event == "socket.getaddrinfo":
            problem = self._host_event(args[0] if args else None)
        else:
            return
        if problem:
            self.active = False  # the report itself must not trip the hook
            self.violations.append(problem)
            raise HermeticityError(problem)


_GUARD: Guard | None = None


def start_session() -> Guard:
    """Install the guard (it records the real roots first), then give the whole session its own HF home, offline:
    huggingface_hub fixes its paths when it is imported, so this must run before any HF library loads. Smoke and
    slow tests keep it too: they load models from the model packages, not from the HF cache."""
    global _GUARD
    if _GUARD is None:
        _GUARD = Guard(real_roots())
        sys.addaudithook(_GUARD)
        for name in HF_REDIRECTS:
            os.environ.pop(name, None)
        os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="l2lzo-test-hf-")
        os.environ["HF_HUB_OFFLINE"] = "1"
    return _GUARD


def guard() -> Guard:
    """The session's guard (see :func:`start_session`)."""
    return start_session()


# What a slow or smoke test keeps of the real environment: l2lzo's cache, where the models unpacked from their
# wheels and the prepared task data live (cache_dir() reads L2LZO_CACHE_DIR, else XDG_CACHE_HOME).
REAL_DATA_ENV = ("L2LZO_CACHE_DIR", "XDG_CACHE_HOME")


def isolate(monkeypatch: pytest.MonkeyPatch, tmp: Path, keep: tuple[str, ...] = ()) -> None:
    """Point every cache and data folder but those named in ``keep`` at ``tmp`` (a fresh folder per test) and keep
    the HF libraries off the hub: the environment, and the cache paths that HF libraries imported earlier have
    already read from it."""
    for name, sub in ISOLATED_ENV.items():
        if name not in keep:
            monkeypatch.setenv(name, str(tmp / sub))
    hf_home = tmp / ISOLATED_ENV["HF_HOME"]
    for module, attribute, sub in HF_CACHE_ATTRIBUTES:
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, attribute):
            old = getattr(loaded, attribute)
            new = hf_home / sub if sub else hf_home
            monkeypatch.setattr(loaded, attribute, new if isinstance(old, Path) else str(new))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

"""Is the Hugging Face hub reachable? Asked once, quickly, before any HF call that would retry for minutes."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def offline_mode() -> bool:
    """Whether the user told HF libraries to stay offline."""
    return _truthy("HF_HUB_OFFLINE") or _truthy("HF_DATASETS_OFFLINE")


def probe_hub(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the hub answers a TCP connect within ``timeout`` seconds, else the reason it does not."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"

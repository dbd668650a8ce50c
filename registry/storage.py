"""Where registry files live: a local directory (OS-level atomicity) or any fsspec filesystem.

Layout under the root: ``models/<model dirname>/v000001.safetensors``. Version files are created once and never
modified; names are zero-padded so lexical order is numeric order. A file whose name starts with ``.tmp-`` is
an upload in progress (or left by a crashed one) and is ignored by every reader.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from contextlib import suppress
from datetime import UTC
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from registry.errors import RegistryError

TEMP_PREFIX = ".tmp-"
MODELS_DIR = "models"
_VERSION_FILE = re.compile(r"v([0-9]{6,})\.safetensors")
# os.write may return a short count, so writes loop; 1 MiB per call keeps any single blocking syscall short.
_WRITE_CHUNK = 1024 * 1024


def version_filename(version: int) -> str:
    """The file name of a version: ``v000001.safetensors``."""
    return f"v{version:06d}.safetensors"


def parse_version_filename(name: str) -> int | None:
    """The version a file name stands for, or None when ``version_filename`` would not produce this name."""
    match = _VERSION_FILE.fullmatch(name)
    if not match:
        return None
    version = int(match.group(1))
    return version if version >= 1 and version_filename(version) == name else None


def next_version(names: Iterable[str], floor: int = 0) -> int:
    """One more than the highest version among ``names`` and ``floor``."""
    return max([floor, *(v for v in map(parse_version_filename, names) if v is not None)]) + 1


class LocalStorage:
    """A registry root on the local filesystem.

    ``create_version`` writes a temp file, fsyncs it, then ``os.link``s it to the version's name: link is atomic
    and fails rather than replacing an existing file, so concurrent writers (threads or processes) always get
    distinct versions, a reader never sees a partial file, and a crash leaves at most a stale temp file.
    Requires a filesystem with hard links (any POSIX local filesystem).
    """

    def __init__(self, root: Path):
        self.root = root
        self.models_dir = root / MODELS_DIR

    def describe(self, dirname: str, name: str | None = None) -> str:
        """A human-readable location, for messages."""
        path = self.models_dir / dirname
        return str(path / name if name else path)

    def model_dirs(self) -> list[str]:
        """Names of the directories under ``models/``."""
        try:
            with os.scandir(self.models_dir) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def entries(self, dirname: str) -> list[str]:
        """Names of the files in a model directory (empty when it does not exist)."""
        try:
            return sorted(os.listdir(self.models_dir / dirname))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def stat(self, dirname: str, name: str) -> tuple[int, str | None]:
        """``(size, change token)``; the token changes whenever the file could have (``FileNotFoundError``)."""
        st = os.stat(self.models_dir / dirname / name)
        return st.st_size, f"{st.st_mtime_ns}:{st.st_ino}"

    def age_seconds(self, dirname: str, name: str) -> float | None:
        """Seconds since the file was last modified."""
        return time.time() - os.stat(self.models_dir / dirname / name).st_mtime

    def read(self, dirname: str, name: str, limit: int) -> bytes:
        """The file's bytes; reads at most ``limit + 1`` so an oversized file is detected, not loaded."""
        with open(self.models_dir / dirname / name, "rb") as handle:
            return handle.read(limit + 1)

    def read_prefix(self, dirname: str, name: str, length: int) -> bytes:
        """The first ``length`` bytes of the file (fewer if it is shorter)."""
        with open(self.models_dir / dirname / name, "rb") as handle:
            return handle.read(length)

    def create_version(self, dirname: str, data: bytes) -> int:
        """Store ``data`` as the next version of the model in ``dirname``; returns that version."""
        model_dir = self.models_dir / dirname
        if not model_dir.is_dir():
            model_dir.mkdir(parents=True, exist_ok=True)
            # Make the new directory entries durable too, or a crash could lose a "durable" version.
            _fsync_dir(self.models_dir)
            _fsync_dir(self.root)
        temp = model_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            self.write_temp(temp, data)
            version = 0
            while True:
                version = next_version(os.listdir(model_dir), floor=version)
                try:
                    os.link(temp, model_dir / version_filename(version))
                    break
                except FileExistsError:
                    continue  # another writer took this number: list again, try higher
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temp)
        _fsync_dir(model_dir)
        return version

    @staticmethod
    def write_temp(path: Path, data: bytes) -> None:
        """Write ``data`` to a new file at ``path`` (never an existing one) and fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:_WRITE_CHUNK]):]
            os.fsync(fd)
        finally:
            os.close(fd)


class FsspecStorage:
    """A registry root on any fsspec filesystem (``memory://``, ``s3://``, ``gcs://``, ...).

    Guarantee (weaker than ``LocalStorage``): each version is written with one
    ``fs.pipe_file(path, data, mode="create")`` call, i.e. a single exclusive-create upload of at most the
    registry's file limit. On object stores an upload becomes visible only once complete, so readers never see a
    partial file. Whether concurrent writers in different processes or machines always get distinct versions
    depends on the driver: where it implements ``mode="create"`` as a conditional write (S3 ``If-None-Match: *``,
    GCS ``ifGenerationMatch=0``, Azure ``overwrite=False``), the loser gets ``FileExistsError`` and retries with
    the next number; fsspec's generic fallback is check-then-write, which leaves a small window in which one such
    push can overwrite another (a lost version, never a mixed file: readers check every file's own sha256).
    Within one process, pushes through this class are serialised by a lock, so threads never race each other on
    any driver (``memory://``'s check-then-create included). A temp-then-move scheme would not help: ``mv`` on
    object stores is copy-then-delete, neither atomic nor exclusive. For filesystems whose writes are visible
    while in progress (sftp, ftp, ...), mount them and use a local path instead.
    """

    # Shared by all instances: two Registry objects on one root in one process must not race either. Uploads are
    # rare and small, so serialising them costs nothing that matters.
    _create_lock = threading.Lock()

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str):
        self.fs, self.url = fs, url
        self.models_dir = f"{root.rstrip('/')}/{MODELS_DIR}"

    def describe(self, dirname: str, name: str | None = None) -> str:
        """A human-readable location, for messages."""
        path = f"{self.url.rstrip('/')}/{MODELS_DIR}/{dirname}"
        return f"{path}/{name}" if name else path

    def _path(self, dirname: str, name: str) -> str:
        return f"{self.models_dir}/{dirname}/{name}"

    def _list(self, path: str) -> list[dict]:
        # Drivers such as s3fs cache listings; other processes' pushes must become visible.
        self.fs.invalidate_cache(path)
        try:
            return self.fs.ls(path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def model_dirs(self) -> list[str]:
        """Names of the directories under ``models/``."""
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._list(self.models_dir)
                      if e.get("type") == "directory")

    def entries(self, dirname: str) -> list[str]:
        """Names of the files in a model directory (empty when it does not exist)."""
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in self._list(f"{self.models_dir}/{dirname}")
                      if e.get("type") != "directory")

    def stat(self, dirname: str, name: str) -> tuple[int, str | None]:
        """``(size, change token)``; the token is None when the driver reports no modification stamp."""
        info = self.fs.info(self._path(dirname, name))
        stamps = [info.get(k) for k in ("mtime", "LastModified", "last_modified", "updated", "created", "ETag", "etag")]
        token = next((str(s) for s in stamps if s is not None), None)
        return int(info["size"]), token

    def age_seconds(self, dirname: str, name: str) -> float | None:
        """Seconds since the file was last modified, or None when the driver cannot tell."""
        try:
            modified = self.fs.modified(self._path(dirname, name))
        except NotImplementedError:
            return None
        if modified.tzinfo is None:  # fsspec's convention for naive stamps is UTC
            modified = modified.replace(tzinfo=UTC)
        return time.time() - modified.timestamp()

    def read(self, dirname: str, name: str, limit: int) -> bytes:
        """The file's bytes; reads at most ``limit + 1`` so an oversized file is detected, not loaded."""
        with self.fs.open(self._path(dirname, name), "rb") as handle:
            return handle.read(limit + 1)

    def read_prefix(self, dirname: str, name: str, length: int) -> bytes:
        """The first ``length`` bytes of the file (fewer if it is shorter): one ranged read on object stores."""
        return self.fs.cat_file(self._path(dirname, name), start=0, end=length)

    def create_version(self, dirname: str, data: bytes) -> int:
        """Store ``data`` as the next version of the model in ``dirname``; returns that version."""
        with self._create_lock:
            self.fs.makedirs(f"{self.models_dir}/{dirname}", exist_ok=True)
            version = 0
            while True:
                version = next_version(self.entries(dirname), floor=version)
                try:
                    self.fs.pipe_file(self._path(dirname, version_filename(version)), data, mode="create")
                    return version
                except FileExistsError:
                    continue  # another writer took this number: list again, try higher


def open_storage(root: str | os.PathLike) -> LocalStorage | FsspecStorage:
    """The storage for a root: a plain path or ``file://`` URL is local, any other URL goes through fsspec."""
    text = os.fspath(root)
    if "://" not in text:
        return LocalStorage(Path(text).expanduser())
    try:
        fs, path = fsspec.core.url_to_fs(text)
    except (ImportError, ValueError) as exc:
        raise RegistryError(f"cannot open registry {text!r}: {exc}") from None
    if isinstance(fs, LocalFileSystem):
        return LocalStorage(Path(path))
    return FsspecStorage(fs, path, text)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

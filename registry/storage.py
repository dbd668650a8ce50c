"""Where registry files live: a local directory (OS-level atomicity) or any fsspec filesystem.

Layout under the root: ``models/<model dirname>/v000001.safetensors``. Version files are created once and never
modified; names are zero-padded so lexical order is numeric order. A file whose name starts with ``.tmp-`` is
an upload in progress (or left by a crashed one) and is ignored by every reader. On a local root each model
directory also holds ``.lock``, which writers of that model hold while they write.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from registry.errors import RegistryError

TEMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
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

    Writers of a model take an exclusive ``flock`` on its ``.lock`` file (``writing``), then ``create_version``
    writes a temp file, fsyncs it, and ``os.link``s it to the version's name: link is atomic and fails rather than
    replacing an existing file, so concurrent writers (threads or processes) always get distinct versions, a
    reader never sees a partial file, and a crash leaves at most a temp file. The kernel drops a dead process's
    lock, so a temp file found while holding the lock belongs to no live writer: it is stale, whatever its age
    (``stale_temp_files``). Requires a filesystem with hard links and ``flock`` (any POSIX local filesystem; NFS
    emulates ``flock`` with POSIX locks).
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
        return _size_and_token(os.stat(self.models_dir / dirname / name))

    def read(self, dirname: str, name: str, limit: int) -> bytes:
        """The file's bytes; reads at most ``limit + 1`` so an oversized file is detected, not loaded."""
        with open(self.models_dir / dirname / name, "rb") as handle:
            return handle.read(limit + 1)

    def read_prefix(self, dirname: str, name: str, length: int) -> bytes:
        """The first ``length`` bytes of the file (fewer if it is shorter)."""
        with open(self.models_dir / dirname / name, "rb") as handle:
            return handle.read(length)

    def open(self, dirname: str, name: str) -> tuple[BinaryIO, int, str | None]:
        """The open file with ``(size, change token)`` of exactly what it reads (from ``fstat``, not the path)."""
        handle = open(self.models_dir / dirname / name, "rb")  # noqa: SIM115 -- the caller closes it
        try:
            return handle, *_size_and_token(os.fstat(handle.fileno()))
        except BaseException:
            handle.close()
            raise

    @contextmanager
    def writing(self, dirname: str) -> Iterator[None]:
        """Hold the model's write lock (creating its directory), waiting for other writers of that model."""
        model_dir = self.models_dir / dirname
        if not model_dir.is_dir():
            model_dir.mkdir(parents=True, exist_ok=True)
            # Make the new directory entries durable too, or a crash could lose a "durable" version.
            _fsync_dir(self.models_dir)
            _fsync_dir(self.root)
        with self._locked(dirname, wait=True):
            yield

    def create_version(self, dirname: str, data: bytes) -> int:
        """Store ``data`` as the next version of the model in ``dirname`` (inside ``writing``); returns it."""
        model_dir = self.models_dir / dirname
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
                    continue  # a writer that does not lock (an older l2lzo) took this number: list again
        finally:
            with suppress(FileNotFoundError):
                os.unlink(temp)
        _fsync_dir(model_dir)
        return version

    def stale_temp_files(self, dirname: str) -> list[str]:
        """Temp files in the model directory that no live writer owns (``OSError`` if the lock cannot be opened).

        Empty while a push of this model is in progress: its temp file may be among them.
        """
        if not any(name.startswith(TEMP_PREFIX) for name in self.entries(dirname)):
            return []
        with self._locked(dirname, wait=False) as held:
            # Listed under the lock: writers create temp files only while holding it.
            return [name for name in self.entries(dirname) if name.startswith(TEMP_PREFIX)] if held else []

    def remove(self, dirname: str, name: str) -> None:
        """Delete one file of a model directory."""
        os.unlink(self.models_dir / dirname / name)

    @contextmanager
    def _locked(self, dirname: str, *, wait: bool) -> Iterator[bool]:
        fd = os.open(self.models_dir / dirname / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

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
    Within one process, pushes through this class are serialised by a lock (``writing``), so threads never race
    each other on any driver (``memory://``'s check-then-create included). A temp-then-move scheme would not help:
    ``mv`` on object stores is copy-then-delete, neither atomic nor exclusive. For filesystems whose writes are
    visible while in progress (sftp, ftp, ...), mount them and use a local path instead. This class never writes
    temp files, so any ``.tmp-*`` file it finds (say, copied in from a local root) is stale.
    """

    # Shared by all instances: two Registry objects on one root in one process must not race either. Uploads are
    # rare and small, so serialising them costs nothing that matters.
    _write_lock = threading.Lock()

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

    def read(self, dirname: str, name: str, limit: int) -> bytes:
        """The file's bytes; reads at most ``limit + 1`` so an oversized file is detected, not loaded."""
        with self.fs.open(self._path(dirname, name), "rb") as handle:
            return handle.read(limit + 1)

    def read_prefix(self, dirname: str, name: str, length: int) -> bytes:
        """The first ``length`` bytes of the file (fewer if it is shorter): one ranged read on object stores."""
        return self.fs.cat_file(self._path(dirname, name), start=0, end=length)

    def open(self, dirname: str, name: str) -> tuple[BinaryIO, int, str | None]:
        """The open file with its ``(size, change token)``, taken just before opening it."""
        size, token = self.stat(dirname, name)
        return self.fs.open(self._path(dirname, name), "rb"), size, token

    @contextmanager
    def writing(self, dirname: str) -> Iterator[None]:
        """Hold this process's write lock (creating the model's directory where the filesystem has them)."""
        with self._write_lock:
            self.fs.makedirs(f"{self.models_dir}/{dirname}", exist_ok=True)
            yield

    def create_version(self, dirname: str, data: bytes) -> int:
        """Store ``data`` as the next version of the model in ``dirname`` (inside ``writing``); returns it."""
        version = 0
        while True:
            version = next_version(self.entries(dirname), floor=version)
            try:
                self.fs.pipe_file(self._path(dirname, version_filename(version)), data, mode="create")
                return version
            except FileExistsError:
                continue  # another writer took this number: list again, try higher

    def stale_temp_files(self, dirname: str) -> list[str]:
        """Every temp file in the model directory: no writer of this kind makes them."""
        return [name for name in self.entries(dirname) if name.startswith(TEMP_PREFIX)]

    def remove(self, dirname: str, name: str) -> None:
        """Delete one file of a model directory."""
        self.fs.rm_file(self._path(dirname, name))


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


def _size_and_token(st: os.stat_result) -> tuple[int, str]:
    return st.st_size, f"{st.st_mtime_ns}:{st.st_ino}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

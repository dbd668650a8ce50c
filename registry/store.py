"""The policy registry: artifacts keyed by normalised base-model id, with immutable integer versions.

``latest`` is the highest valid version, computed from the listing each time (there is no mutable pointer file
to corrupt). Every file a reader returns has been fully validated (format, metadata, data sha256) and its
whole-file sha256 (the ETag) computed; both are cached in memory per (file, size, change stamp) so repeated
requests do not re-read or re-hash. What is re-checked when: ``read_bytes`` re-hashes what it returns;
``open_verified`` hands out a file whose stamp this process has verified (hashing it first if not);
``verify`` re-reads everything, bypassing the cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple

from registry.artifact import (
    HEADER_LENGTH_BYTES,
    MAX_BYTES,
    MAX_HEADER_BYTES,
    MAX_TENSORS,
    header_length,
    parse_artifact,
    read_metadata,
)
from registry.errors import CorruptArtifact, InvalidArtifact, InvalidModelId, InvalidRequest, NotFound
from registry.ids import model_dirname, model_from_dirname, normalize_model_id
from registry.storage import (
    LOCK_NAME,
    TEMP_PREFIX,
    FsspecStorage,
    LocalStorage,
    open_storage,
    parse_version_filename,
    version_filename,
)

log = logging.getLogger(__name__)

# The exact forms the registry accepts for a version and a fingerprint (no padding, no stripping), written so
# that the service can declare them in its OpenAPI schema (ECMA-262 and Python syntax alike; used with fullmatch).
VERSION_PATTERN = r"^(?:latest|[1-9][0-9]{0,17})$"
FINGERPRINT_PATTERN = r"^[0-9a-fA-F]{8,128}$"
_VERSION = re.compile(VERSION_PATTERN)
_FINGERPRINT = re.compile(FINGERPRINT_PATTERN)
_CACHE_ENTRIES = 4096
_VALIDATION_STRIPES = 64
# One ranged read usually covers a policy's whole header (object stores charge per request).
_HEADER_READ = 64 * 1024
# Hashing an unverified file before serving it: 1 MiB reads bound the memory it takes.
_HASH_CHUNK = 1024 * 1024


def default_root() -> str:
    """``$L2LZO_REGISTRY``, else ``$XDG_DATA_HOME/l2lzo/registry``, else ``~/.local/share/l2lzo/registry``."""
    explicit = os.environ.get("L2LZO_REGISTRY")
    if explicit:
        return explicit
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data_home) / "l2lzo" / "registry")


@dataclass(frozen=True)
class Record:
    """One stored version: where it is, its whole-file sha256 (the ETag), size in bytes and metadata."""

    model: str
    version: int
    sha256: str
    size: int
    metadata: dict[str, str] = field(hash=False)

    def to_json(self) -> dict:
        """A JSON-ready dict (the service's and the CLI's representation)."""
        return {"model": self.model, "version": self.version, "sha256": self.sha256, "size": self.size,
                "metadata": dict(self.metadata)}


class Pushed(NamedTuple):
    """What ``Registry.push`` did: the stored record, and whether it is a new version (False: the same bytes
    were already stored as ``record.version``)."""

    record: Record
    created: bool


@dataclass(frozen=True)
class ModelSummary:
    """A model's latest version and how many valid versions it has."""

    latest: Record
    count: int

    def to_json(self) -> dict:
        """A JSON-ready dict (the service's and the CLI's representation)."""
        return {"model": self.latest.model, "latest": self.latest.version, "count": self.count,
                "sha256": self.latest.sha256, "created_at": self.latest.metadata["created_at"]}


@dataclass(frozen=True)
class _Cached:
    metadata: dict[str, str]
    sha256: str | None  # None: only the header was read


class Registry:
    """Policy artifacts keyed by base model, on a local directory or any fsspec URL.

    ``root`` None means ``default_root()``. A plain path or ``file://`` URL uses the local filesystem with
    OS-level atomicity (see ``registry.storage.LocalStorage``); any other URL goes through fsspec, with the
    guarantees described in ``registry.storage.FsspecStorage``. The limits apply to every file pushed or read.
    A Registry is safe to share between threads; several processes may share one root.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, max_bytes: int = MAX_BYTES,
                 max_tensors: int = MAX_TENSORS, max_header_bytes: int = MAX_HEADER_BYTES):
        self.root = os.fspath(root) if root is not None else default_root()
        self.max_bytes, self.max_tensors, self.max_header_bytes = max_bytes, max_tensors, max_header_bytes
        self._storage: LocalStorage | FsspecStorage = open_storage(self.root)
        self._cache: OrderedDict[tuple, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        # Striped, so memory stays bounded: one full validation of a given file at a time (see _record).
        self._validation_locks = tuple(threading.Lock() for _ in range(_VALIDATION_STRIPES))

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    @property
    def is_local(self) -> bool:
        """Whether the root is on the local filesystem (reads are syscalls, not network round trips)."""
        return isinstance(self._storage, LocalStorage)

    # -- writing ---------------------------------------------------------------------------------------------

    def push(self, data: bytes, model: str) -> Pushed:
        """Validate ``data`` and store it as the next version of ``model``, unless a valid version of ``model``
        already holds exactly these bytes: then nothing is stored and that version is returned (``created`` False).

        The artifact's ``base_model`` metadata must name the same model (after normalisation). Raises
        ``InvalidModelId`` or ``InvalidArtifact`` without storing anything when the input is bad. Pushes of one
        model are serialised (see ``writing`` in ``registry.storage``), so concurrent pushes of the same bytes
        make one version.
        """
        model = normalize_model_id(model)
        info = self._parse(data)
        base = normalize_model_id(info.metadata["base_model"])
        if base != model:
            raise InvalidArtifact(f"artifact's base_model is {base!r}, not {model!r}")
        dirname = model_dirname(model)
        with self._storage.writing(dirname):
            existing = self._identical_version(model, dirname, info.size, info.file_sha256)
            if existing is not None:
                log.info("%s version %d already holds these bytes (sha256 %s)", model, existing.version,
                         existing.sha256)
                return Pushed(existing, created=False)
            version = self._storage.create_version(dirname, bytes(data))
        self._remember(dirname, version_filename(version), info.metadata, info.file_sha256)
        log.info("stored %s version %d (%d bytes, sha256 %s)", model, version, info.size, info.file_sha256)
        return Pushed(Record(model, version, info.file_sha256, info.size, info.metadata), created=True)

    # -- reading ---------------------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every model with at least one version, sorted."""
        found = []
        for dirname in self._storage.model_dirs():
            try:
                model = model_from_dirname(dirname)
            except InvalidModelId:
                continue  # not ours; verify() reports it
            if any(parse_version_filename(n) for n in self._storage.entries(dirname)):
                found.append(model)
        return found

    def versions(self, model: str) -> list[Record]:
        """All valid versions of ``model``, oldest first; ``NotFound`` when it has none.

        A stored file that fails validation is skipped with a warning (``verify`` reports it).
        """
        model = normalize_model_id(model)
        dirname = model_dirname(model)
        records = []
        for version in self._version_numbers(dirname):
            record = self._valid_record_or_none(model, dirname, version)
            if record is not None:
                records.append(record)
        if not records:
            raise NotFound(f"no policy for model {model!r}")
        return records

    def summaries(self) -> list[ModelSummary]:
        """The latest version and version count of every model, sorted by model id."""
        found = []
        for model in self.models():
            try:
                records = self.versions(model)
            except NotFound:
                continue  # only invalid or vanished files: nothing to serve
            found.append(ModelSummary(records[-1], len(records)))
        return found

    def get(self, model: str, version: int | str = "latest") -> Record:
        """One version of ``model``: an int, a numeric string, or ``"latest"`` (the highest valid version).

        ``NotFound`` when absent, ``InvalidRequest`` for a malformed version, ``CorruptArtifact`` when the
        requested numbered version exists but fails validation.
        """
        model = normalize_model_id(model)
        dirname = model_dirname(model)
        number = _parse_version(version)
        numbers = self._version_numbers(dirname)
        if number is None:
            for candidate in reversed(numbers):
                record = self._valid_record_or_none(model, dirname, candidate)
                if record is not None:
                    return record
            raise NotFound(f"no policy for model {model!r}")
        try:
            return self._record(model, dirname, number)
        except FileNotFoundError:
            if not numbers:
                raise NotFound(f"no policy for model {model!r}") from None
            raise NotFound(f"model {model!r} has no version {number} (latest is {numbers[-1]})") from None

    def read_bytes(self, record: Record) -> bytes:
        """The file of ``record``, checked against ``record.sha256`` (``CorruptArtifact`` if it differs)."""
        dirname, name = model_dirname(record.model), version_filename(record.version)
        try:
            data = self._storage.read(dirname, name, self.max_bytes)
        except FileNotFoundError:
            raise NotFound(f"model {record.model!r} version {record.version} is gone") from None
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise CorruptArtifact(f"{self._storage.describe(dirname, name)} no longer matches its sha256 "
                                  f"{record.sha256[:16]}...; run `l2lzo registry verify`")
        return data

    def open_verified(self, record: Record) -> BinaryIO:
        """The file of ``record``, open for streaming; the caller closes it.

        What was verified: the open file's size and change stamp (inode and mtime, from ``fstat`` on a local root)
        are those of a file this process has fully validated with whole-file sha256 ``record.sha256`` (when it
        first read the version, or at push); if not, the file is hashed now, once, and ``CorruptArtifact`` raised
        when it differs. Versions are never rewritten, so only damage that keeps inode, size and mtime (bit rot,
        in-place tampering) goes unnoticed here: ``verify`` re-reads every file, and a client that checks the
        download against its ETag (the sha256) refuses it.
        """
        dirname, name = model_dirname(record.model), version_filename(record.version)
        try:
            handle, size, stamp = self._storage.open(dirname, name)
        except FileNotFoundError:
            raise NotFound(f"model {record.model!r} version {record.version} is gone") from None
        try:
            cached = self._cached(dirname, name, size, stamp)
            if cached is None or cached.sha256 != record.sha256:
                digest = hashlib.sha256()
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
                if digest.hexdigest() != record.sha256:
                    raise CorruptArtifact(f"{self._storage.describe(dirname, name)} no longer matches its sha256 "
                                          f"{record.sha256[:16]}...; run `l2lzo registry verify`")
                self._remember(dirname, name, record.metadata, record.sha256, size=size, stamp=stamp)
                handle.seek(0)
        except BaseException:
            handle.close()
            raise
        return handle

    def resolve(self, fingerprint: str) -> Record | None:
        """The latest version whose ``fingerprint`` metadata matches, or None.

        ``fingerprint`` is 8-128 hex characters, either case (``FINGERPRINT_PATTERN``). Within a model the highest
        matching version wins; across models (a base and its derivatives share a fingerprint) the most recently
        created one. Only headers are read while searching.
        """
        if not _FINGERPRINT.fullmatch(fingerprint):
            raise InvalidRequest(f"fingerprint must be 8-128 hex characters, got {fingerprint[:80]!r}")
        wanted = fingerprint.lower()
        candidates: list[tuple[datetime, str, int]] = []
        for model in self.models():
            dirname = model_dirname(model)
            for version in reversed(self._version_numbers(dirname)):
                metadata = self._metadata_or_none(dirname, version_filename(version))
                if metadata is not None and metadata["fingerprint"] == wanted:
                    candidates.append((datetime.fromisoformat(metadata["created_at"]), model, version))
                    break
        for _, model, version in sorted(candidates, reverse=True):
            record = self._valid_record_or_none(model, model_dirname(model), version)
            if record is not None:
                return record
        return None

    def verify(self) -> list[str]:
        """Re-read and re-check every file, bypassing the cache; returns the problems found (empty = healthy).

        Reports unreadable or invalid files, sha256 mismatches, files whose ``base_model`` does not match
        their directory, stray files and directories, and stale temp files (left by interrupted pushes; see
        ``remove_stale_temp_files``; the temp file of a push in progress is not a problem).
        """
        problems = []
        for dirname in self._storage.model_dirs():
            try:
                model = model_from_dirname(dirname)
            except InvalidModelId:
                problems.append(f"{self._storage.describe(dirname)}: unexpected directory (not a model id)")
                continue
            try:
                stale = set(self._storage.stale_temp_files(dirname))
            except OSError as exc:
                problems.append(f"{self._storage.describe(dirname)}: cannot tell which temp files are stale "
                                f"({exc.strerror or exc})")
                stale = set()
            for name in self._storage.entries(dirname):
                where = self._storage.describe(dirname, name)
                if name in stale:
                    problems.append(f"{where}: stale temp file left by an interrupted push (`l2lzo registry verify "
                                    "--repair` deletes it)")
                elif name.startswith(TEMP_PREFIX) or name == LOCK_NAME:
                    continue  # a push in progress, or the writers' lock
                elif parse_version_filename(name) is None:
                    problems.append(f"{where}: unexpected file (not a version)")
                else:
                    problem = self._check_file(model, dirname, name)
                    if problem:
                        problems.append(f"{where}: {problem}")
        return problems

    def remove_stale_temp_files(self) -> list[str]:
        """Delete the temp files that interrupted pushes left behind; returns their locations.

        A temp file is stale when no live writer owns it: on a local root, when the model's write lock is free
        (a killed writer's lock is released by the kernel, so this is exact and needs no grace period); on other
        filesystems, always (pushes there write no temp files). Raises ``OSError`` when it cannot tell or delete
        (a read-only root).
        """
        removed = []
        for dirname in self._storage.model_dirs():
            try:
                model_from_dirname(dirname)
            except InvalidModelId:
                continue  # not ours: verify() reports it, nothing here deletes in it
            for name in self._storage.stale_temp_files(dirname):
                try:
                    self._storage.remove(dirname, name)
                except FileNotFoundError:
                    continue  # another cleaner was first
                removed.append(self._storage.describe(dirname, name))
                log.info("removed %s, left by an interrupted push", removed[-1])
        return removed

    # -- internals -------------------------------------------------------------------------------------------

    def _parse(self, data: bytes):
        return parse_artifact(data, max_bytes=self.max_bytes, max_tensors=self.max_tensors,
                              max_header_bytes=self.max_header_bytes)

    def _version_numbers(self, dirname: str) -> list[int]:
        return sorted(v for v in map(parse_version_filename, self._storage.entries(dirname)) if v is not None)

    def _check_file(self, model: str, dirname: str, name: str) -> str | None:
        try:
            size, _ = self._storage.stat(dirname, name)
            info = self._parse(self._read_checked(dirname, name, size))
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        except InvalidArtifact as exc:
            return str(exc)
        base = normalize_model_id(info.metadata["base_model"])
        if base != model:
            return f"base_model is {base!r}, but the file is stored under {model!r}"
        return None

    def _read_checked(self, dirname: str, name: str, size: int) -> bytes:
        # Checked against the size from stat first, so an oversized stored file is never loaded whole.
        if size > self.max_bytes:
            raise InvalidArtifact(f"file is {size} bytes, limit {self.max_bytes}")
        return self._storage.read(dirname, name, self.max_bytes)

    def _record(self, model: str, dirname: str, version: int) -> Record:
        """The record of one version (``FileNotFoundError`` if absent, ``CorruptArtifact`` if invalid)."""
        name = version_filename(version)
        size, stamp = self._storage.stat(dirname, name)
        record = self._cached_record(model, version, dirname, name, size, stamp)
        if record is not None:
            return record
        # Concurrent first requests for one file wait for a single validation instead of each loading the file
        # (50 simultaneous downloads of a 16 MB policy would otherwise hold 50 copies).
        with self._validation_locks[hash((dirname, name)) % _VALIDATION_STRIPES]:
            record = self._cached_record(model, version, dirname, name, size, stamp)
            if record is None:
                record = self._validated_record(model, version, dirname, name, size, stamp)
        return record

    def _cached_record(self, model: str, version: int, dirname: str, name: str, size: int,
                       stamp: str | None) -> Record | None:
        cached = self._cached(dirname, name, size, stamp)
        if cached is None or cached.sha256 is None:
            return None
        return Record(model, version, cached.sha256, size, cached.metadata)

    def _validated_record(self, model: str, version: int, dirname: str, name: str, size: int,
                          stamp: str | None) -> Record:
        try:
            info = self._parse(self._read_checked(dirname, name, size))
        except InvalidArtifact as exc:
            raise CorruptArtifact(f"{self._storage.describe(dirname, name)}: {exc}") from None
        if normalize_model_id(info.metadata["base_model"]) != model:
            raise CorruptArtifact(f"{self._storage.describe(dirname, name)}: base_model "
                                  f"{info.metadata['base_model']!r} does not match the directory")
        # Keyed by the stamp taken before the read: a file replaced meanwhile gets a new stamp and a new entry.
        self._remember(dirname, name, info.metadata, info.file_sha256, size=size, stamp=stamp)
        return Record(model, version, info.file_sha256, info.size, info.metadata)

    def _identical_version(self, model: str, dirname: str, size: int, sha256: str) -> Record | None:
        """The newest valid version whose file is ``size`` bytes with whole-file ``sha256``, or None."""
        for version in reversed(self._version_numbers(dirname)):
            try:
                stored_size, _ = self._storage.stat(dirname, version_filename(version))
            except FileNotFoundError:
                continue
            if stored_size == size:  # only files of the same size can hold the same bytes
                record = self._valid_record_or_none(model, dirname, version)
                if record is not None and record.sha256 == sha256:
                    return record
        return None

    def _valid_record_or_none(self, model: str, dirname: str, version: int) -> Record | None:
        try:
            return self._record(model, dirname, version)
        except FileNotFoundError:
            return None  # removed between listing and reading
        except CorruptArtifact as exc:
            log.warning("skipping %s", exc)
            return None

    def _metadata_or_none(self, dirname: str, name: str) -> dict[str, str] | None:
        """Validated header metadata, reading only the header; None for a missing or invalid file."""
        try:
            size, stamp = self._storage.stat(dirname, name)
            cached = self._cached(dirname, name, size, stamp)
            if cached is not None:
                return cached.metadata
            head = self._storage.read_prefix(dirname, name, min(size, _HEADER_READ))
            end = HEADER_LENGTH_BYTES + header_length(head, size=size, max_header_bytes=self.max_header_bytes)
            if end > len(head):
                head = self._storage.read_prefix(dirname, name, end)
            metadata = read_metadata(head, size=size, max_header_bytes=self.max_header_bytes,
                                     max_tensors=self.max_tensors)
        except FileNotFoundError:
            return None
        except InvalidArtifact as exc:
            log.warning("skipping %s: %s", self._storage.describe(dirname, name), exc)
            return None
        self._remember(dirname, name, metadata, None, size=size, stamp=stamp)
        return metadata

    def _cached(self, dirname: str, name: str, size: int, stamp: str | None) -> _Cached | None:
        if stamp is None:
            return None
        with self._lock:
            entry = self._cache.get((dirname, name, size, stamp))
            if entry is not None:
                self._cache.move_to_end((dirname, name, size, stamp))
            return entry

    def _remember(self, dirname: str, name: str, metadata: dict[str, str], sha256: str | None, *,
                  size: int | None = None, stamp: str | None = None) -> None:
        if size is None:
            try:
                size, stamp = self._storage.stat(dirname, name)
            except FileNotFoundError:
                return
        if stamp is None:
            return  # no way to notice a change: do not cache
        key = (dirname, name, size, stamp)
        with self._lock:
            previous = self._cache.get(key)
            if sha256 is None and previous is not None:
                return  # never downgrade a fully checked entry to a header-only one
            self._cache[key] = _Cached(metadata, sha256)
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)


def _parse_version(version: int | str) -> int | None:
    """A version number, or None for ``latest``; ``InvalidRequest`` otherwise.

    A string must match ``VERSION_PATTERN`` exactly: ``latest`` or a decimal number without sign, padding or
    leading zeros, so that one version has one spelling.
    """
    if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
        return version
    if isinstance(version, str) and _VERSION.fullmatch(version):
        return None if version == "latest" else int(version)
    raise InvalidRequest(f"version must be a positive integer or 'latest', got {str(version)[:40]!r}")

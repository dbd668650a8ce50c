"""The policy registry: artifacts keyed by normalised base-model id, with immutable integer versions.

``latest`` is the highest valid version, computed from the listing each time (there is no mutable pointer file
to corrupt). Every file a reader returns has been fully validated (format, metadata, data sha256) and its
whole-file sha256 (the ETag) computed; both are cached in memory per (file, size, change stamp) so repeated
requests do not re-read or re-hash, and nothing depends on the cache for correctness (``verify`` bypasses it,
``read_bytes`` re-checks the sha256 of what it returns).
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
    TEMP_PREFIX,
    FsspecStorage,
    LocalStorage,
    open_storage,
    parse_version_filename,
    version_filename,
)

log = logging.getLogger(__name__)

# A push takes well under a second locally and seconds on an object store; a temp file older than this was
# left by an interrupted push.
TEMP_GRACE_SECONDS = 600.0
_CACHE_ENTRIES = 4096
# One ranged read usually covers a policy's whole header (object stores charge per request).
_HEADER_READ = 64 * 1024
_HEX = re.compile(r"[0-9a-f]{8,128}")


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

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    # -- writing ---------------------------------------------------------------------------------------------

    def push(self, data: bytes, model: str) -> Record:
        """Validate ``data`` and store it as the next version of ``model``; returns its record.

        The artifact's ``base_model`` metadata must name the same model (after normalisation). Raises
        ``InvalidModelId`` or ``InvalidArtifact`` without storing anything when the input is bad.
        """
        model = normalize_model_id(model)
        info = self._parse(data)
        base = normalize_model_id(info.metadata["base_model"])
        if base != model:
            raise InvalidArtifact(f"artifact's base_model is {base!r}, not {model!r}")
        dirname = model_dirname(model)
        version = self._storage.create_version(dirname, bytes(data))
        self._remember(dirname, version_filename(version), info.metadata, info.file_sha256)
        log.info("stored %s version %d (%d bytes, sha256 %s)", model, version, info.size, info.file_sha256)
        return Record(model, version, info.file_sha256, info.size, info.metadata)

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

    def resolve(self, fingerprint: str) -> Record | None:
        """The latest version whose ``fingerprint`` metadata matches, or None.

        Within a model the highest matching version wins; across models (a base and its derivatives share a
        fingerprint) the most recently created one. Only headers are read while searching.
        """
        wanted = fingerprint.strip().lower()
        if not _HEX.fullmatch(wanted):
            raise InvalidRequest(f"fingerprint must be 8-128 hex characters, got {fingerprint[:80]!r}")
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

    def verify(self, *, temp_grace_seconds: float = TEMP_GRACE_SECONDS) -> list[str]:
        """Re-read and re-check every file, bypassing the cache; returns the problems found (empty = healthy).

        Reports unreadable or invalid files, sha256 mismatches, files whose ``base_model`` does not match
        their directory, stray files and directories, and temp files older than ``temp_grace_seconds``
        (left by interrupted pushes; younger ones may belong to a push in progress).
        """
        problems = []
        for dirname in self._storage.model_dirs():
            try:
                model = model_from_dirname(dirname)
            except InvalidModelId:
                problems.append(f"{self._storage.describe(dirname)}: unexpected directory (not a model id)")
                continue
            for name in self._storage.entries(dirname):
                where = self._storage.describe(dirname, name)
                if name.startswith(TEMP_PREFIX):
                    try:
                        age = self._storage.age_seconds(dirname, name)
                    except FileNotFoundError:
                        continue  # a push in progress just finished
                    if age is None or age >= temp_grace_seconds:
                        problems.append(f"{where}: stale temp file left by an interrupted push (safe to delete)")
                elif parse_version_filename(name) is None:
                    problems.append(f"{where}: unexpected file (not a version)")
                else:
                    problem = self._check_file(model, dirname, name)
                    if problem:
                        problems.append(f"{where}: {problem}")
        return problems

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
        cached = self._cached(dirname, name, size, stamp)
        if cached is not None and cached.sha256 is not None:
            return Record(model, version, cached.sha256, size, cached.metadata)
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
    """A version number, or None for ``latest``; ``InvalidRequest`` otherwise."""
    text = version.strip() if isinstance(version, str) else None
    if text is not None and text.lower() == "latest":
        return None
    if isinstance(version, int) and not isinstance(version, bool):
        number = version
    elif text is not None and text.isascii() and text.isdigit() and len(text) <= 18:
        number = int(text)
    else:
        number = 0
    if number < 1:
        raise InvalidRequest(f"version must be a positive integer or 'latest', got {str(version)[:40]!r}")
    return number

"""HTTP client for the policy service: fetch a version or resolve a fingerprint, cache by ETag, verify, degrade
gracefully.

- A download is kept only if its sha256 equals the server's ETag; cached files are re-hashed on every use.
- The cache is revalidated with ``If-None-Match`` (a 304 costs no download).
- Server down: the cached copy is used, with a ``PolicyWarning``; without one, a one-line ``L2LZOError``.

Which policy a job runs (its own, else one for its fingerprint, and what a mismatch means) is decided in
``l2lzo.policy.source``, by the same rule as for a local registry; this module only answers its two questions.
It talks HTTP only; it never imports the service or the registry.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from l2lzo.errors import L2LZOError
from l2lzo.files import atomic_write_bytes
from l2lzo.paths import cache_dir
from l2lzo.policy.artifact import MEZO_SIGMA, PolicyArtifact


class PolicyWarning(UserWarning):
    """The job goes on, but not with the policy the user may expect (cached copy, or MeZO fallback)."""


class PolicyClient:
    """Fetches policy artifacts from an l2lzo service.

    ``cache`` defaults to ``<l2lzo cache>/policies``; entries are keyed by server, model and version.
    """

    def __init__(self, server: str, *, cache: Path | None = None, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None):
        parts = check_server_url(server)
        self.server = server.rstrip("/")
        self.cache = (cache or cache_dir() / "policies") / quote(parts.netloc + parts.path.rstrip("/"), safe="")
        self._http = httpx.Client(base_url=self.server, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def upload(self, model: str, data: bytes, token: str) -> dict:
        """Store ``data`` as a new version of ``model`` on the service; its record (model, version, sha256...)."""
        url = f"/v1/models/{quote(model, safe='/')}/versions"
        try:
            response = self._http.post(url, content=data, headers={"Authorization": f"Bearer {token}",
                                                                    "Content-Type": "application/octet-stream"})
        except httpx.TransportError as exc:
            raise L2LZOError(f"cannot reach {self.server} ({exc})") from exc
        if response.status_code not in (200, 201):
            raise L2LZOError(f"{self.server} refused the upload: {response.status_code} {_error_message(response)}")
        return response.json()

    def fetch_version(self, model: str, version: int | str = "latest") -> PolicyArtifact | None:
        """The verified artifact of ``model`` at ``version``; None when the model has no policy at all (``latest``).

        A pinned ``version`` that does not exist is an ``L2LZOError``.
        """
        entry = _CacheEntry(self.cache / quote(model, safe="") / str(version))
        cached = entry.read()
        headers = {"If-None-Match": f'"{cached["sha256"]}"'} if cached else {}
        url = f"/v1/models/{quote(model, safe='/')}/versions/{quote(str(version), safe='')}"
        try:
            response = self._http.get(url, headers=headers)
        except httpx.TransportError as exc:
            return self._offline(model, version, entry, cached, f"cannot reach {self.server} ({exc})")
        if response.status_code == 304 and cached:
            return entry.artifact(cached)
        if response.status_code == 404:
            if version != "latest":
                raise L2LZOError(f"{self.server}: {_error_message(response)}")
            return None
        if response.status_code >= 500:
            return self._offline(model, version, entry, cached, f"{self.server} answered {response.status_code}")
        if response.status_code != 200:
            raise L2LZOError(f"{self.server} refused {url}: {response.status_code} {_error_message(response)}")
        etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
        digest = hashlib.sha256(response.content).hexdigest()
        if etag != digest:
            raise L2LZOError(f"policy download for {model!r} is corrupt: sha256 {digest[:12]}... but ETag "
                             f"{etag[:12] or 'missing'}...")
        record = {"model": response.headers.get("x-l2lzo-model", model),
                  "version": int(response.headers.get("x-l2lzo-version", version if version != "latest" else 0)),
                  "sha256": digest}
        return entry.artifact(entry.write(response.content, record))

    def fetch_by_fingerprint(self, fingerprint: str) -> PolicyArtifact | None:
        """The verified latest artifact trained for ``fingerprint`` (any model: ``/v1/resolve``), or None."""
        pointer = _CacheEntry(self.cache / "by-fingerprint" / fingerprint)
        try:
            response = self._http.get("/v1/resolve", params={"fingerprint": fingerprint})
        except httpx.TransportError as exc:
            # Offline: follow the last resolution we saw to its cached file, if any.
            known = pointer.read_pointer()
            if known is None:
                raise L2LZOError(f"cannot reach {self.server} ({exc}), and no cached policy for fingerprint "
                                 f"{fingerprint[:12]}...; run without --server to use {MEZO_SIGMA}") from exc
            return self.fetch_version(known["model"], known["version"])
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise L2LZOError(f"{self.server} refused to resolve fingerprint {fingerprint[:12]}...: "
                             f"{response.status_code} {_error_message(response)}")
        record = response.json()
        pointer.write_pointer({"model": record["model"], "version": int(record["version"])})
        return self.fetch_version(record["model"], int(record["version"]))

    def _offline(self, model, version, entry: _CacheEntry, cached: dict | None, why: str) -> PolicyArtifact:
        if not cached:
            raise L2LZOError(f"{why}, and no cached policy for {model!r}@{version}; run without --server "
                             f"to fine-tune with {MEZO_SIGMA}")
        warnings.warn(f"{why}: using the cached policy {model}@{cached['version']} "
                      f"(sha256 {cached['sha256'][:12]})", PolicyWarning, stacklevel=3)
        return entry.artifact(cached)


def check_server_url(server: str):
    """The parsed URL, or a one-line error when it is not an http(s) URL."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise L2LZOError(f"--server must be an http(s) URL, got {server!r}")
    return parts


class _CacheEntry:
    """One cached download: ``<stem>.safetensors`` and ``<stem>.json`` (model, version, sha256), both atomic."""

    def __init__(self, stem: Path):
        self.file, self.record = stem.with_suffix(".safetensors"), stem.with_suffix(".json")

    def read(self) -> dict | None:
        """The record, if it and a file matching its sha256 are there (a damaged entry counts as absent)."""
        try:
            record = json.loads(self.record.read_text())
            intact = hashlib.sha256(self.file.read_bytes()).hexdigest() == record["sha256"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            return None
        return record if intact else None

    def write(self, data: bytes, record: dict) -> dict:
        # The file lands before its record, so a reader that sees the record always finds a complete file.
        atomic_write_bytes(self.file, data)
        atomic_write_bytes(self.record, json.dumps(record).encode())
        return record

    def read_pointer(self) -> dict | None:
        """A record without a file: where a fingerprint resolved to last time."""
        try:
            return json.loads(self.record.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def write_pointer(self, record: dict) -> None:
        atomic_write_bytes(self.record, json.dumps(record).encode())

    def artifact(self, record: dict) -> PolicyArtifact:
        return PolicyArtifact.load(self.file, model=record["model"], version=record["version"],
                                   sha256=record["sha256"])


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except (json.JSONDecodeError, AttributeError):
        return response.text[:200]

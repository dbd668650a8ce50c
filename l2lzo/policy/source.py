"""Where a fine-tune's learned policy comes from: ``--policy FILE | MODEL[@VERSION] | auto [--server URL]``.

* ``FILE``: a local ``.safetensors`` policy file.
* ``MODEL[@VERSION]``: that registry entry (``latest`` by default), from the service at ``--server`` or else
  from the local registry (``--registry``, ``$L2LZO_REGISTRY``, or the XDG default).
* ``auto``: the fine-tuned model's own policy, else any policy trained for its architecture fingerprint
  (a derivative finds its base's), else the policy shipped with l2lzo for that fingerprint
  (``l2lzo.policy.zoo``); when there is none, a ``PolicyWarning`` and sigma = 1 (MeZO).

``resolve_policy`` is the one resolver for ``finetune``, ``finetune-batch`` and the benchmark probes, and the
service and the local registry answer it by the same rule (``_Service`` and ``_Local`` offer the same two
lookups). An explicitly named policy that was trained for another fingerprint is refused with a one-line
error; ``auto`` never picks one. This is the one place in ``l2lzo`` that reads a local registry (``registry``
is a sibling package of the same distribution with no torch code); over HTTP it goes through ``l2lzo.client``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from l2lzo.client import PolicyClient, PolicyWarning
from l2lzo.errors import L2LZOError
from l2lzo.files import atomic_write_bytes
from l2lzo.paths import cache_dir
from l2lzo.policy.artifact import MEZO_SIGMA, PolicyArtifact
from l2lzo.policy.zoo import shipped_files
from registry import NotFound, Registry, RegistryError, parse_artifact

AUTO = "auto"


@dataclass(frozen=True)
class PolicySpec:
    """A parsed ``--policy`` value."""

    kind: str  # "file" | "registry" | "auto"
    path: Path | None = None
    model: str | None = None
    version: str = "latest"


def parse_policy_spec(spec: str) -> PolicySpec:
    """``FILE`` (ends in .safetensors or exists), ``auto``, or ``MODEL[@VERSION]``; one-line error if malformed."""
    spec = spec.strip()
    if not spec:
        raise L2LZOError("--policy is empty: give FILE, MODEL[@VERSION] or auto")
    if spec == AUTO:
        return PolicySpec("auto")
    path = Path(spec).expanduser()
    if spec.endswith(".safetensors") or path.is_file():
        if not path.is_file():
            raise L2LZOError(f"policy file {path} does not exist")
        return PolicySpec("file", path=path)
    model, _, version = spec.partition("@")
    if not model or (version and version != "latest" and not version.isdigit()):
        raise L2LZOError(f"--policy {spec!r} is not FILE, MODEL[@VERSION] or auto")
    return PolicySpec("registry", model=model, version=version or "latest")


def open_policy(spec: str, *, server: str | None = None, registry_root: str | None = None) -> PolicyArtifact:
    """The verified artifact a FILE or MODEL[@VERSION] names, for inspection (no fingerprint check)."""
    parsed = parse_policy_spec(spec)
    if parsed.kind == "auto":
        raise L2LZOError("name a policy to open: FILE or MODEL[@VERSION], not auto")
    if parsed.kind == "file":
        return _from_file(parsed.path)
    with _source(server, registry_root) as source:
        return _named(source, parsed)


def resolve_policy(spec: str, *, model_id: str | None, fingerprint: str, server: str | None = None,
                   registry_root: str | None = None) -> PolicyArtifact | None:
    """The verified policy ``spec`` names for a model with this ``fingerprint``, or None (sigma = 1, warned).

    ``model_id`` is the fine-tuned model's registry id (None for a local model folder, which is found by
    fingerprint only). The rule, the same whether ``server`` or the local registry answers:

    * FILE or MODEL[@VERSION]: that artifact, or a one-line ``L2LZOError`` when it does not exist or was trained
      for another fingerprint (the user named it: running something else would hide the mistake).
    * ``auto``: the model's own latest policy if it was trained for ``fingerprint``, else the latest policy of
      any model trained for ``fingerprint``; that also holds when the model's own entry is another
      architecture's (a ``PolicyWarning`` says it was passed over). ``auto`` asks for a policy that fits this
      model, and only the fingerprint says whether one does: a matching name proves nothing (a reused id,
      another revision), and falling back to MeZO because of it would drop a policy that fits. Neither
      source has one: the policy shipped with l2lzo for ``fingerprint``, if any, with a ``PolicyWarning``
      that says so; nothing fits: a ``PolicyWarning`` and None.
    """
    parsed = parse_policy_spec(spec)
    if parsed.kind == "file":
        artifact = _from_file(parsed.path)
    else:
        with _source(server, registry_root) as source:
            artifact = (_auto(source, model_id, fingerprint) if parsed.kind == "auto" else _named(source, parsed))
        if artifact is None:
            return None
    artifact.check_fingerprint(fingerprint)
    return _learned_or_none(artifact)


def _named(source: _Local | _Service, parsed: PolicySpec) -> PolicyArtifact:
    artifact = source.version(parsed.model, parsed.version)
    if artifact is None:
        raise L2LZOError(f"no policy {parsed.model}@{parsed.version} in {source.where}")
    return artifact


def _auto(source: _Local | _Service, model_id: str | None, fingerprint: str) -> PolicyArtifact | None:
    own = source.version(model_id) if model_id is not None else None
    if own is not None and own.fingerprint == fingerprint:
        return own
    found = source.by_fingerprint(fingerprint)
    shipped = _shipped(fingerprint) if found is None else None
    if found is not None:
        instead = f"using {found.label()}, found by fingerprint"
    elif shipped is not None:
        instead = f"using the policy shipped with l2lzo, {shipped.label()}"
    else:
        instead = MEZO_SIGMA
    if own is not None:
        warnings.warn(f"the policy for {model_id}, {own.label()}, was trained for fingerprint "
                      f"{str(own.fingerprint)[:12]}..., not this model's {fingerprint[:12]}...: {instead}",
                      PolicyWarning, stacklevel=4)
    elif found is None:
        warnings.warn(f"no policy for {model_id or 'this model'} (fingerprint {fingerprint[:12]}...) in "
                      f"{source.where}: {instead}", PolicyWarning, stacklevel=4)
    return found or shipped


def _shipped(fingerprint: str) -> PolicyArtifact | None:
    """The shipped policy trained for ``fingerprint`` (the first by file name), or None."""
    for path in shipped_files():
        artifact = _from_file(path)
        if artifact.fingerprint == fingerprint:
            return artifact
    return None


def _from_file(path: Path) -> PolicyArtifact:
    """A local policy file, fully validated like a registry upload (format, metadata, data sha256)."""
    try:
        parse_artifact(path.read_bytes())
    except OSError as exc:
        raise L2LZOError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except RegistryError as exc:
        raise L2LZOError(f"policy file {path} is not a valid policy: {exc}") from None
    return PolicyArtifact.from_file(path)


def _learned_or_none(artifact: PolicyArtifact) -> PolicyArtifact:
    if not artifact.is_learned:
        warnings.warn(f"policy {artifact.label()} holds hyperparameters only (no network): {MEZO_SIGMA}",
                      PolicyWarning, stacklevel=3)
    return artifact


@contextmanager
def _source(server: str | None, registry_root: str | None) -> Iterator[_Local | _Service]:
    """The service at ``server`` if given, else the local registry at ``registry_root`` (or its default)."""
    if server is None:
        yield _Local(registry_root)
        return
    with PolicyClient(server) as client:
        yield _Service(client)


class _Service:
    """The two lookups over HTTP (``l2lzo.client``: ETag cache, verified downloads, offline copies)."""

    def __init__(self, client: PolicyClient):
        self.client, self.where = client, client.server

    def version(self, model: str, version: int | str = "latest") -> PolicyArtifact | None:
        """``model`` at ``version``; None when the model has no policy (``latest``); a missing pin is an error."""
        return self.client.fetch_version(model, version)

    def by_fingerprint(self, fingerprint: str) -> PolicyArtifact | None:
        """The latest policy of any model trained for ``fingerprint``, or None."""
        return self.client.fetch_by_fingerprint(fingerprint)


class _Local:
    """The two lookups in a local registry; files are copied into the cache by sha256 (a stable path)."""

    def __init__(self, root: str | None):
        self.registry = Registry(root)
        self.where = f"the registry at {self.registry.root}"

    def version(self, model: str, version: int | str = "latest") -> PolicyArtifact | None:
        """``model`` at ``version``; None when the model has no policy (``latest``); a missing pin is an error."""
        try:
            record = self.registry.get(model, version)
        except NotFound as exc:
            if version == "latest":
                return None
            raise L2LZOError(f"{self.where}: {exc}") from None
        except RegistryError as exc:
            raise L2LZOError(f"{self.where}: {exc}") from exc
        return self._load(record)

    def by_fingerprint(self, fingerprint: str) -> PolicyArtifact | None:
        """The latest policy of any model trained for ``fingerprint``, or None."""
        try:
            record = self.registry.resolve(fingerprint)
        except RegistryError as exc:
            raise L2LZOError(f"{self.where}: {exc}") from exc
        return self._load(record) if record is not None else None

    def _load(self, record) -> PolicyArtifact:
        try:
            data = self.registry.read_bytes(record)
        except RegistryError as exc:
            raise L2LZOError(f"{self.where}: {exc}") from exc
        # Content-addressed copy in the cache: a stable path for the results' provenance, whatever the root is.
        path = cache_dir() / "policies" / "by-sha256" / f"{record.sha256}.safetensors"
        if not path.exists():
            atomic_write_bytes(path, data)
        return PolicyArtifact.load(path, model=record.model, version=record.version, sha256=record.sha256)

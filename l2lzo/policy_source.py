"""Where a fine-tune's learned policy comes from: ``--policy FILE | MODEL[@VERSION] | auto [--server URL]``.

* ``FILE``: a local ``.safetensors`` policy file.
* ``MODEL[@VERSION]``: that registry entry (``latest`` by default), from the service at ``--server`` or else
  from the local registry (``--registry``, ``$L2LZO_REGISTRY``, or the XDG default).
* ``auto``: the fine-tuned model's own policy, else any policy trained for its architecture fingerprint
  (a derivative finds its base's); when there is none, a ``PolicyWarning`` and sigma = 1 (MeZO).

An explicitly named policy that was trained for another fingerprint is refused with a one-line error; ``auto``
never picks one. This is the one place in ``l2lzo`` that reads a local registry (``registry`` is a sibling
package of the same distribution with no torch code); over HTTP it goes through ``l2lzo.client``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from l2lzo.client import PolicyClient, PolicyWarning
from l2lzo.errors import L2LZOError
from l2lzo.files import atomic_write_bytes
from l2lzo.paths import cache_dir
from l2lzo.policy import MEZO_SIGMA, PolicyArtifact

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
    if server is not None:
        with PolicyClient(server) as client:
            artifact = client.fetch(parsed.model, version=parsed.version)
        if artifact is None:
            raise L2LZOError(f"{server} has no policy {parsed.model}@{parsed.version}")
        return artifact
    return _from_local_registry(parsed, None, "", registry_root)


def resolve_policy(spec: str, *, model_id: str | None, fingerprint: str, server: str | None = None,
                   registry_root: str | None = None) -> PolicyArtifact | None:
    """The verified policy ``spec`` names for a model with this ``fingerprint``, or None (sigma = 1, warned).

    ``model_id`` is the fine-tuned model's registry id (None for a local model folder, which is found by
    fingerprint only).
    """
    parsed = parse_policy_spec(spec)
    if parsed.kind != "auto":
        artifact = open_policy(spec, server=server, registry_root=registry_root)
    elif server is not None:
        with PolicyClient(server) as client:
            return _learned_or_none(client.fetch(model_id, fingerprint=fingerprint))
    else:
        artifact = _from_local_registry(parsed, model_id, fingerprint, registry_root)
        if artifact is None:
            return None
    artifact.check_fingerprint(fingerprint)
    return _learned_or_none(artifact)


def _from_file(path: Path) -> PolicyArtifact:
    """A local policy file, fully validated like a registry upload (format, metadata, data sha256)."""
    from registry import RegistryError, parse_artifact

    try:
        parse_artifact(path.read_bytes())
    except OSError as exc:
        raise L2LZOError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
    except RegistryError as exc:
        raise L2LZOError(f"policy file {path} is not a valid policy: {exc}") from None
    return PolicyArtifact.from_file(path)


def _learned_or_none(artifact: PolicyArtifact | None) -> PolicyArtifact | None:
    if artifact is not None and not artifact.is_learned:
        warnings.warn(f"policy {artifact.label()} holds hyperparameters only (no network): {MEZO_SIGMA}",
                      PolicyWarning, stacklevel=3)
    return artifact


def _from_local_registry(parsed: PolicySpec, model_id: str | None, fingerprint: str,
                         registry_root: str | None) -> PolicyArtifact | None:
    from registry import Registry, RegistryError

    registry = Registry(registry_root)
    try:
        if parsed.kind == "registry":
            record = registry.get(parsed.model, parsed.version)
        else:
            record = _own_or_by_fingerprint(registry, model_id, fingerprint)
            if record is None:
                warnings.warn(f"no policy for {model_id or 'this model'} (fingerprint {fingerprint[:12]}...) in "
                              f"the registry at {registry.root}: {MEZO_SIGMA}", PolicyWarning, stacklevel=3)
                return None
        data = registry.read_bytes(record)
    except RegistryError as exc:
        raise L2LZOError(f"registry {registry.root}: {exc}") from exc
    # Content-addressed copy in the cache: a stable path for the results' provenance, whatever the root is.
    path = cache_dir() / "policies" / "by-sha256" / f"{record.sha256}.safetensors"
    if not path.exists():
        atomic_write_bytes(path, data)
    return PolicyArtifact.load(path, model=record.model, version=record.version, sha256=record.sha256)


def _own_or_by_fingerprint(registry, model_id: str | None, fingerprint: str):
    """The model's own latest policy if it fits the fingerprint, else the latest trained for the fingerprint."""
    from registry import NotFound

    if model_id is not None:
        try:
            record = registry.get(model_id)
        except NotFound:
            record = None
        if record is not None and record.metadata.get("fingerprint") == fingerprint:
            return record
    return registry.resolve(fingerprint)

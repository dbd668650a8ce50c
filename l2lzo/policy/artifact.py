"""Learned perturbation policies as downstream jobs receive them: the artifact file and its metadata.

A policy artifact is one ``.safetensors`` file from the registry: the policy's tensors plus string metadata
(base model and fingerprint, feature spec, recommended lr / eps / steps, ...; see ``../shared/DESIGN.md``).
``PolicyArtifact.network()`` rebuilds the executable policy (``l2lzo.policy.network``) from it; the fine-tune
loop runs it through ``ZeroOrderOptimizer.set_sigma_hook``. An artifact whose feature spec says
``{"kind": "uniform"}`` carries hyperparameters only and perturbs with sigma = 1. An artifact with ``mask``
metadata also carries a sensitivity mask (``l2lzo.policy.sensitivity``): downstream ZO perturbs only its
coordinates, with the network's sigma (or sigma = 1) per block on top.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from l2lzo.errors import ConfigError, L2LZOError
from l2lzo.optim.hyperparameters import check_eps, check_lr

RECOMMENDED_KEYS = ("recommended_lr", "recommended_eps", "recommended_steps")
#: The lr the meta-trainer's final validation picked for sigma = 1 (MeZO) by the same runs, tasks and grid as the
#: policy's own: what `--compare` runs MeZO at, so both arms get the same tuning budget. Older artifacts lack it.
SIGMA1_LR_KEY = "recommended_lr_sigma1"
MEZO_SIGMA = "sigma = 1 (MeZO)"
MASK_KEY = "mask"


@dataclass(frozen=True)
class PolicyArtifact:
    """A policy file whose bytes were checked against their sha256, and its metadata."""

    path: Path
    model: str
    version: int
    sha256: str
    metadata: dict[str, str]

    @classmethod
    def load(cls, path: Path, *, model: str, version: int, sha256: str) -> PolicyArtifact:
        """Read ``path``, check its sha256 and parse its header metadata; ``L2LZOError`` if anything is off."""
        from safetensors import SafetensorError, safe_open

        data = Path(path).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise L2LZOError(f"policy file {path} has sha256 {actual[:12]}..., expected {sha256[:12]}...")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError) as exc:
            raise L2LZOError(f"policy file {path} is not a readable safetensors file: {exc}") from exc
        artifact = cls(path=Path(path), model=model, version=version, sha256=sha256, metadata=metadata)
        artifact.recommended()  # fail now, not halfway through a batch
        return artifact

    @classmethod
    def from_file(cls, path: str | Path) -> PolicyArtifact:
        """A policy file given by path (not from a registry): its sha256 is computed, its model read from it."""
        path = Path(path).expanduser()
        try:
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise L2LZOError(f"cannot read policy file {path}: {exc.strerror or exc}") from None
        artifact = cls.load(path, model="?", version=0, sha256=sha256)
        return cls(path=path, model=artifact.metadata.get("base_model", "?"), version=0, sha256=sha256,
                   metadata=artifact.metadata)

    @property
    def is_learned(self) -> bool:
        """Whether the artifact holds a policy network (and not only hyperparameters)."""
        spec = _json_or_text(self.metadata.get("feature_spec"))
        return isinstance(spec, dict) and spec.get("kind") == "learned"

    def network(self):
        """The executable ``PerturbationPolicy``, or None for a hyperparameters-only artifact.

        ``L2LZOError`` in one line if the tensors are missing, damaged or made for other features.
        """
        if not self.is_learned:
            return None
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from l2lzo.policy.network import PerturbationPolicy

        try:
            arrays = {k: v for k, v in load_file(str(self.path)).items() if not k.startswith("mask.")}
            return PerturbationPolicy.from_arrays(arrays, json.loads(self.metadata["feature_spec"]))
        except (SafetensorError, OSError, ValueError) as exc:
            raise L2LZOError(f"policy {self.label()} cannot be loaded: {exc}") from exc

    @property
    def has_mask(self) -> bool:
        return MASK_KEY in self.metadata

    def mask(self):
        """The ``SensitivityMask`` the artifact carries (made for its fingerprint), or None; one-line errors."""
        if not self.has_mask:
            return None
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        from l2lzo.policy.sensitivity import ARTIFACT_COUNTS, ARTIFACT_INDICES, SensitivityMask

        try:
            arrays = {k: v for k, v in load_file(str(self.path)).items() if k in (ARTIFACT_INDICES, ARTIFACT_COUNTS)}
        except (SafetensorError, OSError) as exc:
            raise L2LZOError(f"policy {self.label()} cannot be loaded: {exc}") from exc
        return SensitivityMask.from_artifact(arrays, self.metadata[MASK_KEY], str(self.fingerprint),
                                             f"policy {self.label()}")

    def check_fingerprint(self, fingerprint: str) -> None:
        """``L2LZOError`` unless the policy was trained for a model with this architecture fingerprint."""
        if self.fingerprint != fingerprint:
            raise L2LZOError(f"policy {self.label()} was trained for fingerprint {str(self.fingerprint)[:12]}..., "
                             f"but this model's is {fingerprint[:12]}...: a policy only transfers within one "
                             "architecture")

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the base model the policy was trained for."""
        return self.metadata.get("fingerprint")

    def recommended(self) -> dict[str, float | int]:
        """The recommended ``lr``, ``eps`` and ``steps`` from the metadata, checked."""
        missing = [k for k in RECOMMENDED_KEYS if k not in self.metadata]
        if missing:
            raise L2LZOError(f"policy {self.label()} lacks metadata {', '.join(missing)}")
        try:
            lr, eps = float(self.metadata["recommended_lr"]), float(self.metadata["recommended_eps"])
            steps = int(self.metadata["recommended_steps"])
            check_lr(lr)
            check_eps(eps)
            if steps < 1:
                raise ConfigError(f"steps must be >= 1, got {steps}")
        except ValueError as exc:
            raise L2LZOError(f"policy {self.label()} has malformed recommendations: {exc}") from exc
        return {"lr": lr, "eps": eps, "steps": steps}

    def sigma1_lr(self) -> float | None:
        """The validated lr for sigma = 1 (``SIGMA1_LR_KEY``), checked; None for an artifact made without it."""
        if SIGMA1_LR_KEY not in self.metadata:
            return None
        try:
            lr = float(self.metadata[SIGMA1_LR_KEY])
            check_lr(lr)
        except ValueError as exc:
            raise L2LZOError(f"policy {self.label()} has a malformed {SIGMA1_LR_KEY}: {exc}") from exc
        return lr

    def label(self) -> str:
        if self.version == 0:  # a file, not a registry version
            return f"{self.path} (sha256 {self.sha256[:12]})"
        return f"{self.model}@{self.version} (sha256 {self.sha256[:12]})"

    def summary(self) -> dict:
        """What a results file records about the policy."""
        return {"model": self.model, "version": self.version, "sha256": self.sha256, "path": str(self.path),
                "fingerprint": self.fingerprint, "learned": self.is_learned, "recommended": self.recommended(),
                "recommended_lr_sigma1": self.sigma1_lr(), "mask": _mask_summary(self.metadata.get(MASK_KEY)),
                "feature_spec": _json_or_text(self.metadata.get("feature_spec"))}


def _mask_summary(value: str | None) -> dict | None:
    """The mask's density, scope and source tasks (not its per-tensor sizes) for a results file."""
    if value is None:
        return None
    meta = _json_or_text(value)
    return {k: meta.get(k) for k in ("density", "scope", "tasks")} if isinstance(meta, dict) else None


def _json_or_text(value: str | None):
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value

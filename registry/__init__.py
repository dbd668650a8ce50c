"""Storage of learned ZO policies keyed by base model: immutable versions, metadata, integrity.

Imports only the standard library, numpy, safetensors and fsspec (no torch, no web framework), so the
service, the meta-trainer and tools can all use it.
"""

from registry.artifact import SCHEMA_VERSION, ArtifactInfo, TensorInfo, build_artifact, parse_artifact
from registry.errors import (
    CorruptArtifact,
    InvalidArtifact,
    InvalidModelId,
    InvalidRequest,
    NotFound,
    RegistryError,
)
from registry.ids import MODEL_ID_PATTERN, exact_model_id, model_dirname, normalize_model_id
from registry.store import (
    FINGERPRINT_PATTERN,
    VERSION_PATTERN,
    ModelSummary,
    Pushed,
    Record,
    Registry,
    default_root,
)

__all__ = [
    "FINGERPRINT_PATTERN",
    "MODEL_ID_PATTERN",
    "SCHEMA_VERSION",
    "VERSION_PATTERN",
    "ArtifactInfo",
    "CorruptArtifact",
    "InvalidArtifact",
    "InvalidModelId",
    "InvalidRequest",
    "ModelSummary",
    "NotFound",
    "Pushed",
    "Record",
    "Registry",
    "RegistryError",
    "TensorInfo",
    "build_artifact",
    "default_root",
    "exact_model_id",
    "model_dirname",
    "normalize_model_id",
    "parse_artifact",
]

"""The policy artifact: one ``.safetensors`` file, the policy's tensors plus string metadata in its header.

Layout of a safetensors file: 8 bytes little-endian header length N, N bytes of JSON header (tensor dtypes,
shapes and byte offsets, plus ``__metadata__``), then the tensor data section. The header is parsed here
first, by hand, so every limit is checked before anything large is decoded; ``safetensors.numpy.load`` then
confirms the file loads. Required metadata (all values are strings):

=====================  ==================================================================
``schema_version``     ``SCHEMA_VERSION``
``base_model``         the base model id (normalised like ``registry.ids.normalize_model_id``)
``fingerprint``        lowercase hex: the base model's architecture fingerprint
``feature_spec``       JSON: the per-block features the policy reads
``recommended_lr``     positive finite number
``recommended_eps``    positive finite number
``recommended_steps``  positive integer
``training_config``    JSON object: meta-training config and tasks
``metrics``            JSON object: held-out metrics
``created_at``         ISO 8601 UTC timestamp
``sha256``             hex sha256 of the data section (the bytes after the header)
=====================  ==================================================================

Optional: ``layout_sha256``, the hex sha256 of the tensor table (each tensor's name, dtype and shape, in data
order: with no gaps allowed, that order fixes the offsets), so that damage to the header cannot rename or
retype a tensor unnoticed; ``build_artifact`` always writes it (files made before 2026-12-08 lack it and are
still read). A file cannot contain its own hash, so ``sha256`` and ``layout_sha256`` leave the rest of the
metadata uncovered; the sha256 of the whole file is the registry's ETag. No pickle is involved anywhere:
safetensors is a plain data format.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import safetensors.numpy

from registry.errors import InvalidArtifact, InvalidModelId
from registry.ids import normalize_model_id

SCHEMA_VERSION = "1"
MAX_TENSORS = 256
MAX_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
HEADER_LENGTH_BYTES = 8

REQUIRED_KEYS = (
    "schema_version", "base_model", "fingerprint", "feature_spec", "recommended_lr", "recommended_eps",
    "recommended_steps", "training_config", "metrics", "created_at", "sha256",
)
# Exactly the dtypes safetensors.numpy can load: a registry that cannot load a tensor cannot vouch for it
# (bf16 / fp8 need torch; a policy of a few thousand numbers has no reason to use them).
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
    "I8": 1, "U8": 1, "BOOL": 1, "C64": 8,
}
LAYOUT_KEY = "layout_sha256"
_TENSOR_KEYS = {"dtype", "shape", "data_offsets"}
_FINGERPRINT = re.compile(r"[0-9a-f]{8,128}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Plain ASCII decimal notation only: Python's float()/int() also take "1_0", Unicode digits and padding, which
# other readers of the metadata (JSON clients, other languages) would parse differently or not at all.
_DECIMAL = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header declares it."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ArtifactInfo:
    """A parsed, fully validated artifact."""

    metadata: dict[str, str]
    tensors: tuple[TensorInfo, ...]
    data_sha256: str
    file_sha256: str
    size: int


def header_length(prefix: bytes, *, size: int, max_header_bytes: int = MAX_HEADER_BYTES) -> int:
    """The header length N from a file's first 8 bytes, checked against ``size`` (the file's) and the limit."""
    if size < HEADER_LENGTH_BYTES or len(prefix) < HEADER_LENGTH_BYTES:
        raise InvalidArtifact(f"not a safetensors file: {size} bytes is too short for the 8-byte header length")
    length = int.from_bytes(prefix[:HEADER_LENGTH_BYTES], "little")
    if length < 2:  # the smallest JSON object, "{}"
        raise InvalidArtifact(f"not a safetensors file: header length {length}")
    if length > size - HEADER_LENGTH_BYTES:
        raise InvalidArtifact(f"not a safetensors file: header length {length} runs past the end of the "
                              f"{size}-byte file")
    if length > max_header_bytes:
        raise InvalidArtifact(f"header is {length} bytes, limit {max_header_bytes}")
    return length


def read_metadata(head: bytes, *, size: int, max_header_bytes: int = MAX_HEADER_BYTES,
                  max_tensors: int = MAX_TENSORS) -> dict[str, str]:
    """Validated metadata from ``head`` = at least the first 8 + N bytes of a ``size``-byte file.

    Checks the header's structure and the metadata but not the tensor data (nor its sha256), so a caller
    can scan many files reading only their headers.
    """
    metadata, _, _ = _parse_header(head, size=size, max_header_bytes=max_header_bytes, max_tensors=max_tensors)
    validate_metadata(metadata)
    return metadata


def parse_artifact(data: bytes, *, max_bytes: int = MAX_BYTES, max_tensors: int = MAX_TENSORS,
                   max_header_bytes: int = MAX_HEADER_BYTES) -> ArtifactInfo:
    """Parse and fully validate an artifact; ``InvalidArtifact`` with a precise one-line message otherwise."""
    size = len(data)
    if size > max_bytes:
        raise InvalidArtifact(f"file is {size} bytes, limit {max_bytes}")
    metadata, tensors, data_start = _parse_header(data, size=size, max_header_bytes=max_header_bytes,
                                                  max_tensors=max_tensors)
    validate_metadata(metadata)
    view = memoryview(data)
    data_sha256 = hashlib.sha256(view[data_start:]).hexdigest()
    if data_sha256 != metadata["sha256"]:
        raise InvalidArtifact(f"data sha256 mismatch: metadata says {metadata['sha256'][:16]}..., the tensor data "
                              f"hashes to {data_sha256[:16]}...")
    layout = layout_sha256(tensors)
    if LAYOUT_KEY in metadata and layout != metadata[LAYOUT_KEY]:
        raise InvalidArtifact(f"tensor table sha256 mismatch: metadata says {metadata[LAYOUT_KEY][:16]}..., the "
                              f"header's tensors hash to {layout[:16]}... (a damaged header)")
    try:
        loaded = safetensors.numpy.load(bytes(data))
    except Exception as exc:  # any failure of the reference parser on untrusted bytes means a bad file
        raise InvalidArtifact(f"safetensors cannot load the file: {_one_line(exc)}") from None
    if set(loaded) != {t.name for t in tensors}:
        raise InvalidArtifact("safetensors reads different tensor names than the header declares")
    return ArtifactInfo(metadata=metadata, tensors=tensors, data_sha256=data_sha256,
                        file_sha256=hashlib.sha256(view).hexdigest(), size=size)


def build_artifact(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str], *,
                   max_bytes: int = MAX_BYTES, max_tensors: int = MAX_TENSORS) -> bytes:
    """Serialise ``tensors`` with ``metadata`` into artifact bytes, validated by ``parse_artifact``.

    ``schema_version``, ``created_at`` (now, UTC) and ``sha256`` (of the data section) are filled in when
    absent; every other required key must be given.
    """
    fields = dict(metadata)
    for key, value in fields.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArtifact(f"metadata keys and values must be strings: {key!r} has a {type(value).__name__}")
    fields.setdefault("schema_version", SCHEMA_VERSION)
    fields.setdefault("created_at", datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
    arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    if "sha256" not in fields or LAYOUT_KEY not in fields:
        # Neither the data section nor the tensor table depends on the metadata: hash them from a first
        # serialisation.
        draft = _save(arrays, fields)
        _, tensors, data_start = _parse_header(draft, size=len(draft), max_header_bytes=len(draft),
                                               max_tensors=max_tensors)
        fields.setdefault("sha256", hashlib.sha256(memoryview(draft)[data_start:]).hexdigest())
        fields.setdefault(LAYOUT_KEY, layout_sha256(tensors))
    data = _save(arrays, fields)
    parse_artifact(data, max_bytes=max_bytes, max_tensors=max_tensors)
    return data


def validate_metadata(metadata: Mapping[str, str]) -> None:
    """Check the required metadata keys and their values; ``InvalidArtifact`` names the first problem."""
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise InvalidArtifact(f"missing metadata key{'s' if len(missing) > 1 else ''} {keys}")
    if metadata["schema_version"] != SCHEMA_VERSION:
        raise InvalidArtifact(f"unsupported schema_version {_show(metadata['schema_version'])} "
                              f"(this registry reads {SCHEMA_VERSION!r})")
    try:
        normalize_model_id(metadata["base_model"])
    except InvalidModelId as exc:
        raise InvalidArtifact(f"base_model: {exc}") from None
    if not _FINGERPRINT.fullmatch(metadata["fingerprint"]):
        raise InvalidArtifact("fingerprint must be 8-128 lowercase hex characters, "
                              f"got {_show(metadata['fingerprint'])}")
    _check_json(metadata, "feature_spec", need_object=False)
    _check_json(metadata, "training_config", need_object=True)
    _check_json(metadata, "metrics", need_object=True)
    for key in ("recommended_lr", "recommended_eps"):
        _check_positive_float(metadata, key)
    _check_positive_int(metadata, "recommended_steps")
    _check_utc_timestamp(metadata, "created_at")
    for key in ("sha256", LAYOUT_KEY):
        if key in metadata and not _SHA256.fullmatch(metadata[key]):
            raise InvalidArtifact(f"{key} must be 64 lowercase hex characters, got {_show(metadata[key])}")


def layout_sha256(tensors: tuple[TensorInfo, ...]) -> str:
    """The hex sha256 of a tensor table as ``parse_artifact`` reads it (names, dtypes, shapes in data order)."""
    table = [[t.name, t.dtype, list(t.shape)] for t in tensors]
    return hashlib.sha256(json.dumps(table, separators=(",", ":")).encode()).hexdigest()


def _save(arrays: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    try:
        return safetensors.numpy.save(arrays, metadata=metadata)
    except Exception as exc:  # e.g. a dtype safetensors has no code for (object, float128)
        raise InvalidArtifact(f"cannot serialise the tensors: {_one_line(exc)}") from None


def _parse_header(head: bytes, *, size: int, max_header_bytes: int,
                  max_tensors: int) -> tuple[dict[str, str], tuple[TensorInfo, ...], int]:
    length = header_length(head, size=size, max_header_bytes=max_header_bytes)
    data_start = HEADER_LENGTH_BYTES + length
    if len(head) < data_start:
        raise InvalidArtifact(f"truncated header: have {len(head)} bytes, the header ends at byte {data_start}")
    try:
        header = json.loads(bytes(head[HEADER_LENGTH_BYTES:data_start]).decode("utf-8"),
                            object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidArtifact("not a safetensors file: header is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidArtifact(f"not a safetensors file: header is not valid JSON ({exc.msg} at byte {exc.pos})"
                              ) from None
    except RecursionError:
        raise InvalidArtifact("not a safetensors file: header JSON is nested too deeply") from None
    except ValueError as exc:  # raised by the hooks
        raise InvalidArtifact(f"not a safetensors file: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidArtifact("not a safetensors file: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidArtifact("__metadata__ must map strings to strings")
    if len(header) > max_tensors:
        raise InvalidArtifact(f"{len(header)} tensors, limit {max_tensors}")
    if not header:
        raise InvalidArtifact("artifact has no tensors")
    spans = sorted((_tensor_span(name, entry) for name, entry in header.items()), key=lambda s: (s[1], s[2]))
    end_of_previous, previous = 0, None
    for name, begin, end in spans:
        if begin < end_of_previous:
            raise InvalidArtifact(f"tensors {_show(previous)} and {_show(name)} overlap")
        if begin > end_of_previous:
            raise InvalidArtifact(f"gap of {begin - end_of_previous} bytes before tensor {_show(name)}")
        end_of_previous, previous = end, name
    data_length = size - data_start
    if end_of_previous > data_length:
        raise InvalidArtifact(f"tensor data needs {end_of_previous} bytes but the file has {data_length} after the "
                              "header (truncated file?)")
    if end_of_previous < data_length:
        raise InvalidArtifact(f"{data_length - end_of_previous} unexpected bytes after the last tensor")
    tensors = tuple(TensorInfo(name, header[name]["dtype"], tuple(header[name]["shape"])) for name, _, _ in spans)
    return metadata, tensors, data_start


def _tensor_span(name: str, entry: object) -> tuple[str, int, int]:
    if not isinstance(entry, dict) or set(entry) != _TENSOR_KEYS:
        raise InvalidArtifact(f"tensor {_show(name)}: header entry must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise InvalidArtifact(f"tensor {_show(name)} has unknown or unsupported dtype {_show(str(dtype))} "
                              f"(supported: {', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise InvalidArtifact(f"tensor {_show(name)}: shape must be a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets)
            or offsets[0] > offsets[1]):
        raise InvalidArtifact(f"tensor {_show(name)}: data_offsets must be [begin, end] with 0 <= begin <= end")
    needed = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != needed:
        raise InvalidArtifact(f"tensor {_show(name)}: {dtype} {_show(str(shape))} needs {needed} bytes, "
                              f"data_offsets give {offsets[1] - offsets[0]}")
    return name, offsets[0], offsets[1]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r} in header")
        result[key] = value
    return result


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _check_json(metadata: Mapping[str, str], key: str, *, need_object: bool) -> None:
    try:
        value = json.loads(metadata[key], parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidArtifact(f"{key} is not valid JSON") from None
    if need_object and not isinstance(value, dict):
        raise InvalidArtifact(f"{key} must be a JSON object")


def _check_positive_float(metadata: Mapping[str, str], key: str) -> None:
    text = metadata[key]
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not (math.isfinite(value) and value > 0):
        raise InvalidArtifact(f"{key} must be a positive number, got {_show(metadata[key])}")


def _check_positive_int(metadata: Mapping[str, str], key: str) -> None:
    text = metadata[key]
    # The length cap keeps int() away from Python's 4300-digit conversion limit.
    if not (_INTEGER.fullmatch(text) and len(text) <= 18 and int(text) > 0):
        raise InvalidArtifact(f"{key} must be a positive integer, got {_show(metadata[key])}")


def _check_utc_timestamp(metadata: Mapping[str, str], key: str) -> None:
    try:
        moment = datetime.fromisoformat(metadata[key])
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None or moment.utcoffset().total_seconds() != 0:
        raise InvalidArtifact(f"{key} must be an ISO 8601 UTC timestamp like 2025-01-31T12:00:00Z, "
                              f"got {_show(metadata[key])}")


def _show(value: str) -> str:
    # repr() keeps control characters on one line; the cut keeps a huge value from flooding the message.
    return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__

"""The policy registry: artifact format, model ids, storage (local and fsspec), concurrency and crash safety."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import struct
import threading
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registry_helpers import (
    FINGERPRINT,
    OTHER_FINGERPRINT,
    make_artifact,
    policy_metadata,
    policy_tensors,
    push_stopped_midway,
    push_worker,
    raw_safetensors,
    wait_at_barrier,
)

from registry import (
    FINGERPRINT_PATTERN,
    MODEL_ID_PATTERN,
    SCHEMA_VERSION,
    VERSION_PATTERN,
    CorruptArtifact,
    InvalidArtifact,
    InvalidModelId,
    InvalidRequest,
    NotFound,
    Registry,
    RegistryError,
    build_artifact,
    default_root,
    exact_model_id,
    model_dirname,
    normalize_model_id,
    parse_artifact,
)
from registry.ids import model_from_dirname


def _metadata_header(**overrides: str) -> dict:
    metadata = {**policy_metadata(), "schema_version": SCHEMA_VERSION, "created_at": "2025-01-31T12:00:00Z",
                **overrides}
    return {"__metadata__": metadata}


def _tensor(dtype: str, shape: list, begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


# -- artifact format ---------------------------------------------------------------------------------------------

def test_build_parse_round_trip():
    tensors = policy_tensors(seed=3)
    data = build_artifact(tensors, policy_metadata())
    info = parse_artifact(data)
    assert info.size == len(data)
    assert info.file_sha256 == hashlib.sha256(data).hexdigest()
    assert info.metadata["schema_version"] == SCHEMA_VERSION
    assert info.metadata["sha256"] == info.data_sha256
    assert info.metadata["created_at"].endswith("Z")
    assert {t.name: (t.dtype, t.shape) for t in info.tensors} == {
        name: ("F32", array.shape) for name, array in tensors.items()}
    loaded = safetensors.numpy.load(data)
    for name, array in tensors.items():
        np.testing.assert_array_equal(loaded[name], array)


def test_build_keeps_given_values_and_rejects_non_strings():
    data = build_artifact(policy_tensors(), policy_metadata(created_at="2024-05-01T08:00:00+00:00", extra="kept"))
    metadata = parse_artifact(data).metadata
    assert metadata["created_at"] == "2024-05-01T08:00:00+00:00" and metadata["extra"] == "kept"
    with pytest.raises(InvalidArtifact, match="must be strings"):
        build_artifact(policy_tensors(), {**policy_metadata(), "recommended_steps": 500})
    with pytest.raises(InvalidArtifact, match="cannot serialise"):
        build_artifact({"w": np.array(["text"])}, policy_metadata())
    with pytest.raises(InvalidArtifact, match="data sha256 mismatch"):
        build_artifact(policy_tensors(), policy_metadata(sha256="0" * 64))


def _truncated(data: bytes) -> bytes:
    return data[:-10]


def _bad_length(data: bytes) -> bytes:
    return struct.pack("<Q", 2**60) + data[8:]


def _zero_length(data: bytes) -> bytes:
    return struct.pack("<Q", 0) + data[8:]


def _flip_data_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


@pytest.mark.parametrize(("mutate", "message"), [
    (_truncated, r"tensor data needs \d+ bytes but the file has \d+ after the header \(truncated file\?\)"),
    (lambda d: d[:5], "too short for the 8-byte header length"),
    (lambda d: d[:40], "header length .* runs past the end"),
    (_bad_length, "header length 1152921504606846976 runs past the end"),
    (_zero_length, "header length 0"),
    (_flip_data_byte, "data sha256 mismatch"),
    (lambda d: d + b"\0" * 4, "4 unexpected bytes after the last tensor"),
])
def test_parse_rejects_damaged_files(mutate, message):
    with pytest.raises(InvalidArtifact, match=message):
        parse_artifact(mutate(make_artifact()))


def _with_header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize(("raw", "message"), [
    (_with_header(b"{not json"), "header is not valid JSON"),
    (_with_header(b"\xff\xfe{}"), "header is not valid UTF-8"),
    (_with_header(b"[1, 2]"), "header is not a JSON object"),
    (_with_header(b'{"a": 1, "a": 2}'), "duplicate key 'a'"),
    (_with_header(b"[" * 5000 + b"]" * 5000), "nested too deeply|not a JSON object"),
    (_with_header(b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, NaN]}}'), "NaN is not valid JSON"),
    (_with_header(b"{}"), "artifact has no tensors"),
    (_with_header(b'{"__metadata__": {"k": 1}, "w": {}}'), "__metadata__ must map strings to strings"),
])
def test_parse_rejects_bad_headers(raw, message):
    with pytest.raises(InvalidArtifact, match=message):
        parse_artifact(raw)


@pytest.mark.parametrize(("tensors", "data", "message"), [
    ({"a": _tensor("F32", [2], 0, 8), "b": _tensor("F32", [2], 4, 12)}, b"\0" * 12, "tensors 'a' and 'b' overlap"),
    ({"a": _tensor("F32", [1], 0, 4), "b": _tensor("F32", [1], 8, 12)}, b"\0" * 12, "gap of 4 bytes before tensor 'b'"),
    ({"a": _tensor("BF16", [2], 0, 4)}, b"\0" * 4, "unknown or unsupported dtype 'BF16'"),
    ({"a": _tensor("Q4_K", [2], 0, 4)}, b"\0" * 4, "unknown or unsupported dtype 'Q4_K'"),
    ({"a": _tensor("F32", [-1], 0, 4)}, b"\0" * 4, "shape must be a list of non-negative integers"),
    ({"a": _tensor("F32", [True], 0, 4)}, b"\0" * 4, "shape must be a list of non-negative integers"),
    ({"a": _tensor("F32", [2], 4, 0)}, b"\0" * 4, r"data_offsets must be \[begin, end\]"),
    ({"a": _tensor("F32", [3], 0, 8)}, b"\0" * 8, r"F32 '\[3\]' needs 12 bytes, data_offsets give 8"),
    ({"a": {**_tensor("F32", [1], 0, 4), "extra": 1}}, b"\0" * 4, "exactly dtype, shape and data_offsets"),
    ({"a": _tensor("F32", [4], 0, 16)}, b"\0" * 8, "tensor data needs 16 bytes but the file has 8"),
])
def test_parse_rejects_bad_tensor_entries(tensors, data, message):
    with pytest.raises(InvalidArtifact, match=message):
        parse_artifact(raw_safetensors({**_metadata_header(), **tensors}, data))


def test_parse_accepts_hand_built_file_and_zero_size_tensors():
    header = {**_metadata_header(), "a": _tensor("F32", [2], 0, 8), "empty": _tensor("F16", [0, 3], 8, 8),
              "flag": _tensor("BOOL", [1], 8, 9)}
    info = parse_artifact(raw_safetensors(header, b"\0" * 9))
    assert [t.name for t in info.tensors] == ["a", "empty", "flag"]


def test_limits():
    data = make_artifact()
    with pytest.raises(InvalidArtifact, match=rf"file is {len(data)} bytes, limit 1000"):
        parse_artifact(data, max_bytes=1000)
    with pytest.raises(InvalidArtifact, match="3 tensors, limit 2"):
        parse_artifact(data, max_tensors=2)
    with pytest.raises(InvalidArtifact, match=r"header is \d+ bytes, limit 100"):
        parse_artifact(data, max_header_bytes=100)
    many = {f"t{i}": np.zeros(1, np.float32) for i in range(257)}
    with pytest.raises(InvalidArtifact, match="257 tensors, limit 256"):
        build_artifact(many, policy_metadata())
    big = {"w": np.zeros(4 * 1024 * 1024 + 1, np.float32)}
    with pytest.raises(InvalidArtifact, match=r"file is \d+ bytes, limit 16777216"):
        build_artifact(big, policy_metadata())


@pytest.mark.parametrize("key", ["fingerprint", "base_model", "sha256", "recommended_lr", "metrics"])
def test_missing_metadata_key(key):
    header = _metadata_header()
    header["__metadata__"].pop(key, None)
    with pytest.raises(InvalidArtifact, match=f"missing metadata key '{key}'$"):
        parse_artifact(raw_safetensors({**header, "a": _tensor("F32", [1], 0, 4)}, b"\0" * 4, fix_sha=key != "sha256"))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("recommended_lr", "abc", "recommended_lr must be a positive number, got 'abc'"),
    ("recommended_lr", "-1e-3", "recommended_lr must be a positive number"),
    ("recommended_lr", "0", "recommended_lr must be a positive number"),
    ("recommended_lr", "nan", "recommended_lr must be a positive number"),
    ("recommended_lr", "inf", "recommended_lr must be a positive number"),
    ("recommended_lr", "1e999", "recommended_lr must be a positive number"),
    ("recommended_lr", "1_0", "recommended_lr must be a positive number"),
    ("recommended_eps", "0.0", "recommended_eps must be a positive number"),
    ("recommended_steps", "1.5", "recommended_steps must be a positive integer, got '1.5'"),
    ("recommended_steps", "0", "recommended_steps must be a positive integer"),
    ("recommended_steps", "9" * 5000, "recommended_steps must be a positive integer"),
    ("feature_spec", "{roles", "feature_spec is not valid JSON"),
    ("training_config", "[1, 2]", "training_config must be a JSON object"),
    ("metrics", '{"loss": NaN}', "metrics is not valid JSON"),
    ("created_at", "yesterday", "created_at must be an ISO 8601 UTC timestamp"),
    ("created_at", "2025-01-31T12:00:00", "created_at must be an ISO 8601 UTC timestamp"),
    ("created_at", "2025-01-31T12:00:00+02:00", "created_at must be an ISO 8601 UTC timestamp"),
    ("fingerprint", "XYZ", "fingerprint must be 8-128 lowercase hex characters, got 'XYZ'"),
    ("fingerprint", "AB" * 32, "fingerprint must be 8-128 lowercase hex characters"),
    ("schema_version", "2", r"unsupported schema_version '2' \(this registry reads '1'\)"),
    ("base_model", "../etc", "base_model: invalid model id '../etc'"),
])
def test_invalid_metadata_values(key, value, message):
    header = _metadata_header(**{key: value})
    with pytest.raises(InvalidArtifact, match=message):
        parse_artifact(raw_safetensors({**header, "a": _tensor("F32", [1], 0, 4)}, b"\0" * 4))


def test_invalid_sha256_format():
    header = _metadata_header(sha256="abc")
    with pytest.raises(InvalidArtifact, match="sha256 must be 64 lowercase hex characters, got 'abc'"):
        parse_artifact(raw_safetensors({**header, "a": _tensor("F32", [1], 0, 4)}, b"\0" * 4, fix_sha=False))


def test_error_messages_are_one_short_line():
    header = _metadata_header(recommended_lr="x\n" * 10_000)
    with pytest.raises(InvalidArtifact) as caught:
        parse_artifact(raw_safetensors({**header, "a": _tensor("F32", [1], 0, 4)}, b"\0" * 4))
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 200


@pytest.mark.parametrize("old, new", [(b'"mlp.0.bias"', b'"llp.0.bias"'), (b'"F32"', b'"I32"')])
def test_a_renamed_or_retyped_tensor_is_refused(old, new):
    """Header damage that keeps a loadable file (a flipped byte in a tensor's name, F32 -> I32) is caught by the
    tensor table's sha256 (hypothesis found the rename; the data sha256 alone does not cover the header)."""
    header = _VALID[:_HEADER_END]
    assert old in header
    damaged = header.replace(old, new, 1) + _VALID[_HEADER_END:]
    with pytest.raises(InvalidArtifact, match="tensor table sha256 mismatch"):
        parse_artifact(damaged)


def test_an_artifact_without_a_tensor_table_sha256_is_still_read():
    """Files made before the key existed: their data sha256 is still checked, their layout cannot be."""
    arrays = safetensors.numpy.load(_VALID)
    metadata = {k: v for k, v in _VALID_INFO.metadata.items() if k != "layout_sha256"}
    old = safetensors.numpy.save(arrays, metadata=metadata)
    assert "layout_sha256" not in parse_artifact(old).metadata
    assert parse_artifact(old).data_sha256 == _VALID_INFO.data_sha256


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parse_never_fails_unexpectedly_on_random_bytes(data):
    with pytest.raises(InvalidArtifact):
        parse_artifact(data)


_VALID = make_artifact(numbers=8)
_VALID_INFO = parse_artifact(_VALID)
_HEADER_END = 8 + int.from_bytes(_VALID[:8], "little")  # the 8-byte length, then the JSON header, then the data


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.integers(0, 7), st.integers(8, _HEADER_END - 1), st.integers(_HEADER_END, len(_VALID) - 1)),
       st.integers(0, 255), st.one_of(st.none(), st.integers(0, len(_VALID) - 1)))
def test_parse_never_fails_unexpectedly_on_damaged_artifacts(position, xor, cut):
    """A flipped byte in the length, the header text or the data (each region drawn as often), maybe a cut."""
    damaged = bytearray(_VALID if cut is None else _VALID[:cut])
    if position < len(damaged):
        damaged[position] ^= xor
    changed = bytes(damaged) != _VALID
    in_header_text = cut is None and 8 <= position < _HEADER_END
    if changed and not in_header_text:  # a cut file, a damaged length or damaged tensor data: always refused
        with pytest.raises(InvalidArtifact):
            parse_artifact(bytes(damaged))
        return
    # Damage to the header's text can leave a valid file (JSON padding, a metadata value): the data sha256 does
    # not cover the header; the whole-file sha256 does (the ETag). What such a file holds is still the original
    # tensors, byte for byte; any other outcome must be InvalidArtifact, never another exception.
    try:
        info = parse_artifact(bytes(damaged))
    except InvalidArtifact:
        return
    assert info.data_sha256 == _VALID_INFO.data_sha256 and info.tensors == _VALID_INFO.tensors
    assert (info.file_sha256 != _VALID_INFO.file_sha256) == changed


# -- model ids ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("smollm2-135m", "smollm2-135m"),
    ("minilm-l6", "minilm-l6"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "huggingfacetb/smollm2-135m-instruct"),
    ("  https://huggingface.co/HuggingFaceTB/SmolLM2-135M/  ", "huggingfacetb/smollm2-135m"),
    ("sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-minilm-l6-v2"),
    ("a", "a"),
    ("org_1/model.v2_", "org_1/model.v2_"),
])
def test_normalize_model_id(raw, expected):
    assert normalize_model_id(raw) == expected
    assert normalize_model_id(expected) == expected


@pytest.mark.parametrize("raw", [
    "", "   ", "/", "../x", "..", ".", "/etc/passwd", "a/b/c", "a\\b", "%2e%2e", "%2F", "a/..", "a//b", "a/./b",
    "a--b", "-a", "a-", "a.", ".hidden", "a\x00b", "a\nb", "x\x7f", "café", "a b", "a@1", "C:\\x", "~root",
    "x" * 97, "https://huggingface.co/", "https://example.com/a",
    # Characters that str.lower() / str.strip() would quietly turn into (part of) a valid id.
    "\u212aey", "smollm2-135m\x1c", "smollm2-135m\x85", "\u2003smollm2-135m", "smollm2-135m\t", "\x1fkey",
    "smollm2-135m\u00a0", "\u0130d",
])
def test_invalid_model_ids(raw):
    with pytest.raises(InvalidModelId):
        normalize_model_id(raw)


def test_exact_model_ids():
    assert exact_model_id("HuggingFaceTB/SmolLM2-135M") == "huggingfacetb/smollm2-135m"
    for lenient in (" key", "key ", "https://huggingface.co/org/key", "org/key/"):
        assert normalize_model_id(lenient) in ("key", "org/key")
        with pytest.raises(InvalidModelId, match="write the id itself"):
            exact_model_id(lenient)
    with pytest.raises(InvalidModelId, match="only printable ASCII"):
        exact_model_id("\u212aey")


def test_dirnames_are_reversible():
    assert model_dirname("HuggingFaceTB/SmolLM2-135M") == "huggingfacetb--smollm2-135m"
    assert model_from_dirname("huggingfacetb--smollm2-135m") == "huggingfacetb/smollm2-135m"
    for bad in ("a---b", "..", "x--y--z", "Upper", ".tmp-123", "a--"):
        with pytest.raises(InvalidModelId):
            model_from_dirname(bad)


_ID_CHARS = st.sampled_from([*"aZ09._-/\\%~ :@\x00\n\x1c\x85\u212a\u0130é", "..", "--", "//",
                             "https://huggingface.co/"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=60), st.lists(_ID_CHARS, max_size=20).map("".join)))
def test_any_string_is_rejected_or_maps_to_one_component_inside_models(tmp_path, raw):
    try:
        model = normalize_model_id(raw)
    except InvalidModelId:
        return
    dirname = model_dirname(raw)
    models = tmp_path / "models"
    assert dirname not in ("", ".", "..")
    assert "/" not in dirname and "\\" not in dirname and "\x00" not in dirname
    assert dirname.isascii() and dirname.isprintable()
    assert (models / dirname).resolve().parent == models.resolve()
    assert model_from_dirname(dirname) == model == normalize_model_id(model)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(_ID_CHARS, max_size=20).map("".join),
                 st.from_regex(MODEL_ID_PATTERN, fullmatch=True)))
def test_model_id_pattern_is_exactly_the_ids_written_as_themselves(raw):
    """The service declares MODEL_ID_PATTERN in its schema and enforces exact_model_id: they must agree."""
    try:
        exact = exact_model_id(raw)
    except InvalidModelId:
        exact = None
    assert (re.fullmatch(MODEL_ID_PATTERN, raw) is not None) == (exact is not None)
    assert exact is None or exact == raw.lower()


# -- store -------------------------------------------------------------------------------------------------------

@pytest.fixture(params=["local", "memory"])
def registry_root(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "registry")
        return
    root = f"memory://registry-{uuid.uuid4().hex}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_push_list_get_latest(registry_root):
    registry = Registry(registry_root)
    assert registry.models() == [] and registry.verify() == [] and registry.summaries() == []
    first, second = make_artifact(seed=1), make_artifact(seed=2)
    r1 = registry.push(first, "SmolLM2-135M").record
    r2 = registry.push(second, "smollm2-135m").record
    other = registry.push(make_artifact("org/model-b"), "https://huggingface.co/Org/Model-B").record
    assert (r1.model, r1.version, r2.version, other.model, other.version) == (
        "smollm2-135m", 1, 2, "org/model-b", 1)
    assert r1.sha256 == hashlib.sha256(first).hexdigest() and r1.size == len(first)
    assert registry.models() == ["org/model-b", "smollm2-135m"]
    assert [r.version for r in registry.versions("smollm2-135m")] == [1, 2]
    assert registry.get("smollm2-135m") == r2
    for spec in (2, "2", "latest"):
        assert registry.get("SmolLM2-135M", spec).version == 2
    assert registry.read_bytes(registry.get("smollm2-135m", 1)) == first
    assert registry.read_bytes(registry.get("smollm2-135m", "latest")) == second
    summaries = {s.latest.model: s.to_json() for s in registry.summaries()}
    assert summaries["smollm2-135m"]["latest"] == 2 and summaries["smollm2-135m"]["count"] == 2
    assert r2.to_json() == {"model": "smollm2-135m", "version": 2, "sha256": r2.sha256, "size": r2.size,
                            "metadata": r2.metadata}
    json.dumps(r2.to_json())
    assert registry.verify() == []
    # Another Registry on the same root (no shared cache) sees the same thing.
    assert Registry(registry_root).get("smollm2-135m") == r2


def test_get_errors(registry_root):
    registry = Registry(registry_root)
    with pytest.raises(NotFound, match="no policy for model 'smollm2-135m'"):
        registry.get("smollm2-135m")
    with pytest.raises(NotFound):
        registry.versions("smollm2-135m")
    registry.push(make_artifact(), "smollm2-135m")
    with pytest.raises(NotFound, match=r"model 'smollm2-135m' has no version 7 \(latest is 1\)"):
        registry.get("smollm2-135m", 7)
    # One spelling per version: no padding, leading zeros, other cases or non-ASCII digits.
    for bad in ("abc", "0", "-1", 0, -3, True, "1.0", "", "1e3", " 1 ", "01", "+1", "LATEST", "1\x1c",
                "latest\x85", "\u0661", "1" * 19):
        with pytest.raises(InvalidRequest, match="version must be a positive integer or 'latest'"):
            registry.get("smollm2-135m", bad)
    assert all(re.fullmatch(VERSION_PATTERN, spec) for spec in ("1", "latest", "9" * 18))
    with pytest.raises(InvalidModelId):
        registry.get("../smollm2-135m")


def test_push_rejects_bad_input_and_stores_nothing(registry_root):
    registry = Registry(registry_root, max_bytes=20_000)
    with pytest.raises(InvalidArtifact, match="artifact's base_model is 'smollm2-135m', not 'minilm-l6'"):
        registry.push(make_artifact("smollm2-135m"), "minilm-l6")
    with pytest.raises(InvalidArtifact, match="data sha256 mismatch"):
        registry.push(_flip_data_byte(make_artifact()), "smollm2-135m")
    with pytest.raises(InvalidArtifact, match="limit 20000"):
        registry.push(make_artifact(numbers=10_000), "smollm2-135m")
    with pytest.raises(InvalidModelId):
        registry.push(make_artifact(), "a/b/c")
    assert registry.models() == [] and registry.verify() == []
    if "://" not in registry_root:
        leftovers = [p for p in Path(registry_root).rglob("*") if p.is_file()]
        assert leftovers == []


def test_resolve_by_fingerprint(registry_root):
    registry = Registry(registry_root)
    assert registry.resolve(FINGERPRINT) is None
    registry.push(make_artifact(seed=1, created_at="2025-01-01T00:00:00Z"), "smollm2-135m")
    base_v2 = registry.push(make_artifact(seed=2, created_at="2025-01-02T00:00:00Z"), "smollm2-135m").record
    registry.push(make_artifact(seed=3, fingerprint=OTHER_FINGERPRINT, created_at="2025-03-01T00:00:00Z"),
                  "smollm2-135m")
    other = registry.push(make_artifact("minilm-l6", fingerprint=OTHER_FINGERPRINT,
                                        created_at="2025-02-01T00:00:00Z"), "minilm-l6").record
    # The latest version with this fingerprint wins, even when a later version has another fingerprint.
    assert registry.resolve(FINGERPRINT) == base_v2
    assert registry.resolve(FINGERPRINT.upper()) == base_v2
    # Across models, the most recently created match wins (smollm2 v3, created 2025-03-01).
    assert registry.resolve(OTHER_FINGERPRINT).model == "smollm2-135m"
    assert registry.resolve(OTHER_FINGERPRINT).version == 3
    assert other.version == 1
    assert registry.resolve("00" * 32) is None
    for bad in ("xyz", "", "ab", f" {FINGERPRINT}", f"{FINGERPRINT}\x1c", f"{FINGERPRINT}\n", "ab" * 65):
        with pytest.raises(InvalidRequest, match="fingerprint must be 8-128 hex characters"):
            registry.resolve(bad)
        assert not re.fullmatch(FINGERPRINT_PATTERN, bad)


def test_derivative_finds_base_policy(registry_root):
    """An -Instruct variant shares its base's architecture fingerprint, so it finds the base's policy."""
    registry = Registry(registry_root)
    base = registry.push(make_artifact("HuggingFaceTB/SmolLM2-135M"), "HuggingFaceTB/SmolLM2-135M").record
    with pytest.raises(NotFound):
        registry.get("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert registry.resolve(FINGERPRINT) == base


def test_resolve_reads_headers_only(registry_root):
    writer = Registry(registry_root)
    for seed in range(4):
        writer.push(make_artifact(seed=seed, fingerprint=OTHER_FINGERPRINT), "smollm2-135m")
    writer.push(make_artifact(seed=9), "smollm2-135m")
    writer.push(make_artifact("minilm-l6", fingerprint=OTHER_FINGERPRINT), "minilm-l6")
    registry = Registry(registry_root)  # cold cache
    full_reads = []
    real_read = registry._storage.read
    registry._storage.read = lambda *args: full_reads.append(args) or real_read(*args)
    assert registry.resolve(FINGERPRINT).version == 5
    assert len(full_reads) == 1  # only the winner, to hash it for its record


def test_cache_avoids_rereads_but_not_correctness(tmp_path, caplog):
    root = tmp_path / "registry"
    registry = Registry(root)
    registry.push(make_artifact(seed=1), "smollm2-135m")
    good = registry.push(make_artifact(seed=2), "smollm2-135m").record
    reads = []
    real_read = registry._storage.read
    registry._storage.read = lambda *args: reads.append(args) or real_read(*args)
    for _ in range(3):
        registry.versions("smollm2-135m")
        registry.get("smollm2-135m")
    assert reads == []
    # Damage version 2 on disk (a new inode and mtime, as any rewrite gives): readers notice at once.
    path = root / "models" / "smollm2-135m" / "v000002.safetensors"
    damaged = root / "damaged"
    damaged.write_bytes(_flip_data_byte(path.read_bytes()))
    os.replace(damaged, path)
    with caplog.at_level(logging.WARNING, logger="registry.store"):
        assert [r.version for r in registry.versions("smollm2-135m")] == [1]
    assert "data sha256 mismatch" in caplog.text
    assert registry.get("smollm2-135m").version == 1  # latest = the highest *valid* version
    with pytest.raises(CorruptArtifact, match=r"v000002\.safetensors: data sha256 mismatch"):
        registry.get("smollm2-135m", 2)
    with pytest.raises(CorruptArtifact, match="no longer matches its sha256"):
        registry.read_bytes(good)
    problems = registry.verify()
    assert len(problems) == 1 and "v000002.safetensors: data sha256 mismatch" in problems[0]


def test_identical_push_returns_the_existing_version(registry_root):
    registry = Registry(registry_root)
    first, second = make_artifact(seed=1), make_artifact(seed=2)
    assert registry.push(first, "smollm2-135m") == (registry.get("smollm2-135m", 1), True)
    assert registry.push(second, "smollm2-135m").created
    again = registry.push(first, "SmolLM2-135M")
    assert again == (registry.get("smollm2-135m", 1), False)
    assert [r.version for r in registry.versions("smollm2-135m")] == [1, 2]
    # Same bytes for another model cannot exist (base_model differs); equal bytes under a fresh Registry still match.
    assert Registry(registry_root).push(second, "smollm2-135m") == (registry.get("smollm2-135m", 2), False)
    # A damaged copy of those bytes does not count: the push makes a new version.
    if "://" not in registry_root:
        path = Path(registry_root) / "models" / "smollm2-135m" / "v000001.safetensors"
        damaged = path.with_name("damaged")
        damaged.write_bytes(_flip_data_byte(first))
        os.replace(damaged, path)
        assert registry.push(first, "smollm2-135m") == (registry.get("smollm2-135m", 3), True)


@pytest.mark.parametrize("backend", ["local", "memory"])
def test_concurrent_identical_pushes_make_one_version(backend, tmp_path):
    root = str(tmp_path / "registry") if backend == "local" else f"memory://same-{uuid.uuid4().hex}"
    registry = Registry(root)
    data = make_artifact()
    start = threading.Barrier(10)

    def push(_: int) -> tuple[int, bool]:
        start.wait()
        record, created = Registry(root).push(data, "smollm2-135m")  # separate caches, as separate processes have
        return record.version, created

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(push, range(10)))
    assert sorted(results) == [(1, False)] * 9 + [(1, True)]
    assert [r.version for r in registry.versions("smollm2-135m")] == [1]


def test_open_verified_streams_what_was_verified(tmp_path, monkeypatch):
    root = tmp_path / "registry"
    registry = Registry(root)
    data = make_artifact(seed=1)
    record = registry.push(data, "smollm2-135m").record
    # A fresh process (empty cache) hashes the file once before handing it out, then trusts its stamp.
    cold = Registry(root)
    hashes = []
    real_sha256 = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *args: hashes.append(args) or real_sha256(*args))
    for _ in range(3):
        with cold.open_verified(record) as handle:
            assert handle.read() == data
    assert len(hashes) == 1
    monkeypatch.undo()
    # Replaced by other bytes (a new inode): refused, whatever the cache says about the old file.
    path = root / "models" / "smollm2-135m" / "v000001.safetensors"
    other = path.with_name("other")
    other.write_bytes(_flip_data_byte(data))
    os.replace(other, path)
    with pytest.raises(CorruptArtifact, match="no longer matches its sha256"):
        registry.open_verified(record)
    path.unlink()
    with pytest.raises(NotFound, match="is gone"):
        registry.open_verified(record)


def test_open_verified_trusts_the_stamp_and_verify_does_not(tmp_path):
    """The documented limit: damage that keeps inode, size and mtime is served (the client's ETag check and
    `registry verify` catch it)."""
    root = tmp_path / "registry"
    registry = Registry(root)
    data = make_artifact(seed=1)
    record = registry.push(data, "smollm2-135m").record
    path = root / "models" / "smollm2-135m" / "v000001.safetensors"
    before = path.stat()
    with open(path, "r+b") as handle:  # same inode and size
        handle.seek(len(data) - 1)
        handle.write(bytes([data[-1] ^ 1]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with registry.open_verified(record) as handle:
        assert hashlib.sha256(handle.read()).hexdigest() != record.sha256
    assert any("sha256 mismatch" in problem for problem in registry.verify())


def test_open_verified_on_an_fsspec_root():
    root = f"memory://open-{uuid.uuid4().hex}"
    registry = Registry(root)
    data = make_artifact(seed=3, numbers=100_000)
    record = registry.push(data, "smollm2-135m").record
    with Registry(root).open_verified(record) as handle:
        assert handle.read() == data
    fsspec.filesystem("memory").rm(root, recursive=True)


def test_concurrent_first_reads_validate_a_file_once(tmp_path):
    root = tmp_path / "registry"
    Registry(root).push(make_artifact(numbers=1_000_000), "smollm2-135m")
    registry = Registry(root)  # cold cache
    parses = []
    real_parse = registry._parse
    registry._parse = lambda data: parses.append(len(data)) or real_parse(data)
    start = threading.Barrier(8)

    def get(_: int) -> str:
        start.wait()
        return registry.get("smollm2-135m").sha256

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert len(set(pool.map(get, range(8)))) == 1
    assert len(parses) == 1


def test_verify_reports_strays_and_stale_temp_files(tmp_path):
    root = tmp_path / "registry"
    registry = Registry(root)
    registry.push(make_artifact(), "smollm2-135m")
    model_dir = root / "models" / "smollm2-135m"
    (model_dir / "notes.txt").write_text("hi")
    (model_dir / "v1.safetensors").write_bytes(make_artifact())  # not the canonical name: ignored, reported
    (root / "models" / "Not A Model").mkdir()
    (model_dir / "v000002.safetensors").write_bytes(make_artifact("minilm-l6"))
    temp = model_dir / ".tmp-0123456789abcdef"
    temp.write_bytes(b"partial")
    # While a writer of the model holds its lock, the temp file may be that push's: not a problem, not removed.
    with registry._storage.writing("smollm2-135m"):
        problems = registry.verify()
        assert registry.remove_stale_temp_files() == [] and temp.exists()
    assert len(problems) == 4, problems
    assert any("notes.txt: unexpected file" in p for p in problems)
    assert any("v1.safetensors: unexpected file" in p for p in problems)
    assert any("Not A Model: unexpected directory" in p for p in problems)
    assert any("base_model is 'minilm-l6', but the file is stored under 'smollm2-135m'" in p for p in problems)
    # With the lock free, no live writer owns it, however young it is.
    problems = registry.verify()
    assert len(problems) == 5 and any(".tmp-0123456789abcdef: stale temp file" in p for p in problems), problems
    assert registry.remove_stale_temp_files() == [str(temp)] and not temp.exists()
    assert len(registry.verify()) == 4
    assert [r.version for r in registry.versions("smollm2-135m")] == [1]


def test_stale_temp_files_on_fsspec_roots_are_always_stale():
    root = f"memory://temps-{uuid.uuid4().hex}"
    registry = Registry(root)
    registry.push(make_artifact(), "smollm2-135m")
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{root}/models/smollm2-135m/.tmp-0123456789abcdef", b"partial")
    assert any("stale temp file" in p for p in registry.verify())
    assert registry.remove_stale_temp_files() == [f"{root}/models/smollm2-135m/.tmp-0123456789abcdef"]
    assert registry.verify() == []
    fs.rm(root, recursive=True)


def test_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("L2LZO_REGISTRY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == str(tmp_path / "xdg" / "l2lzo" / "registry")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == str(tmp_path / "home" / ".local" / "share" / "l2lzo" / "registry")
    monkeypatch.setenv("L2LZO_REGISTRY", str(tmp_path / "env"))
    Registry().push(make_artifact(), "smollm2-135m")
    assert (tmp_path / "env" / "models" / "smollm2-135m" / "v000001.safetensors").is_file()
    via_url = Registry(f"file://{tmp_path / 'env'}")
    assert via_url.get("smollm2-135m").version == 1
    with pytest.raises(RegistryError, match="cannot open registry 'nosuchprotocol://x'"):
        Registry("nosuchprotocol://x")


@pytest.mark.parametrize("backend", ["local", "memory"])
def test_concurrent_pushes_from_threads(backend, tmp_path):
    root = str(tmp_path / "registry") if backend == "local" else f"memory://threads-{uuid.uuid4().hex}"
    registry = Registry(root)
    datas = [make_artifact(seed=i) for i in range(20)]
    start = threading.Barrier(20)

    def push(data: bytes) -> int:
        start.wait()
        return registry.push(data, "smollm2-135m").record.version

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        versions = list(pool.map(push, datas))
    assert sorted(versions) == list(range(1, 21))
    for data, version in zip(datas, versions, strict=True):
        assert registry.read_bytes(registry.get("smollm2-135m", version)) == data
    assert registry.verify() == []


def test_twenty_concurrent_pushes_from_processes(tmp_path):
    root = str(tmp_path / "registry")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(20)
    with concurrent.futures.ProcessPoolExecutor(20, mp_context=context, initializer=wait_at_barrier,
                                                initargs=(barrier,)) as pool:
        results = list(pool.map(push_worker, [root] * 20, ["smollm2-135m"] * 20, range(20)))
    versions = [version for version, _ in results]
    assert sorted(versions) == list(range(1, 21))
    registry = Registry(root)
    for version, sha256 in results:  # every push landed where it said, nothing was overwritten
        assert registry.get("smollm2-135m", version).sha256 == sha256
    assert len({sha for _, sha in results}) == 20
    assert registry.verify() == []
    assert not list((Path(root) / "models" / "smollm2-135m").glob(".tmp-*"))


@pytest.mark.parametrize("hook", ["write", "fsync"])
def test_push_killed_mid_write_leaves_only_complete_versions(tmp_path, hook):
    root = tmp_path / "registry"
    registry = Registry(root)
    small = registry.push(make_artifact(seed=1), "smollm2-135m").record
    large = make_artifact(seed=2, numbers=3_000_000)  # 12 MB: many write chunks
    artifact = tmp_path / "large.safetensors"
    artifact.write_bytes(large)
    with push_stopped_midway(root, artifact, "smollm2-135m", hook) as child:
        temps = list((root / "models" / "smollm2-135m").glob(".tmp-*"))
        assert len(temps) == 1
        size = temps[0].stat().st_size
        assert (0 < size < len(large)) if hook == "write" else size == len(large)
        # The push is alive (it holds the model's lock): its temp file is neither a problem nor removed.
        assert Registry(root).verify() == [] and Registry(root).remove_stale_temp_files() == []
        assert temps[0].exists()
    assert child.returncode == -signal.SIGKILL
    after = Registry(root)
    assert after.models() == ["smollm2-135m"]
    assert [r.version for r in after.versions("smollm2-135m")] == [1]
    assert after.get("smollm2-135m") == small
    # Killed, the push's lock is gone at once: its temp file is stale, and the repair removes it.
    problems = after.verify()
    assert len(problems) == 1 and "stale temp file" in problems[0]
    assert after.remove_stale_temp_files() == [str(temps[0])]
    assert after.verify() == []
    again = after.push(large, "smollm2-135m").record
    assert again.version == 2 and after.read_bytes(again) == large

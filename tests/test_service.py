"""The policy service over HTTP: a real uvicorn server on loopback, driven with httpx and raw http.client."""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from registry_helpers import (
    FINGERPRINT,
    OTHER_FINGERPRINT,
    make_artifact,
    policy_metadata,
    push_stopped_midway,
    raw_safetensors,
    service_process,
    serving,
)

from registry import FINGERPRINT_PATTERN, MODEL_ID_PATTERN, VERSION_PATTERN, Registry, RegistryError
from registry.tokens import TOKEN_ENV, load_token
from service.app import create_app, etag_matches
from service.cli import register

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-upload-token-0123456789"
UPLOAD_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("service")
    (base / "secret.txt").write_text("outside the registry")
    return base


@pytest.fixture(scope="module")
def registry(workspace) -> Registry:
    return Registry(workspace / "registry")


@pytest.fixture(scope="module")
def client(registry) -> Iterator[httpx.Client]:
    app = create_app(registry, token=TOKEN, max_upload_bytes=UPLOAD_LIMIT)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def readonly_client(registry) -> Iterator[httpx.Client]:
    with serving(create_app(registry, token=None)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def _auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}


def _push(client: httpx.Client, model: str, data: bytes) -> httpx.Response:
    return client.post(f"/v1/models/{model}/versions", content=data, headers=_auth())


def _assert_error(response: httpx.Response, status: int, fragment: str = "") -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and fragment in body["error"], body
    assert TOKEN not in response.text
    return body["error"]


def _stored_files(registry: Registry) -> list[str]:
    root = Path(registry.root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_push_list_and_download(client, registry):
    first, second = make_artifact("HuggingFaceTB/SmolLM2-135M", seed=1), make_artifact("huggingfacetb/smollm2-135m",
                                                                                       seed=2)
    created = _push(client, "HuggingFaceTB/SmolLM2-135M", first)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/v1/models/huggingfacetb/smollm2-135m/versions/1"
    record = created.json()
    assert (record["model"], record["version"], record["sha256"], record["size"]) == (
        "huggingfacetb/smollm2-135m", 1, hashlib.sha256(first).hexdigest(), len(first))
    assert record["metadata"]["fingerprint"] == FINGERPRINT
    assert _push(client, "huggingfacetb/smollm2-135m", second).json()["version"] == 2

    models = client.get("/v1/models").json()["models"]
    entry = next(m for m in models if m["model"] == "huggingfacetb/smollm2-135m")
    assert (entry["latest"], entry["count"], entry["sha256"]) == (2, 2, hashlib.sha256(second).hexdigest())
    assert client.get("/healthz").json() == {"status": "ok", "models": len(registry.models())}

    versions = client.get("/v1/models/HuggingFaceTB/SmolLM2-135M/versions").json()
    assert versions["model"] == "huggingfacetb/smollm2-135m"
    assert [v["version"] for v in versions["versions"]] == [1, 2]
    assert versions["versions"][0]["metadata"]["recommended_lr"] == "0.001"
    assert versions["versions"][0]["metadata"]["feature_spec"].startswith("{")

    one = client.get("/v1/models/huggingfacetb/smollm2-135m/versions/1")
    assert one.status_code == 200 and one.content == first
    assert one.headers["content-type"] == "application/octet-stream"
    assert one.headers["etag"] == f'"{hashlib.sha256(first).hexdigest()}"'
    assert one.headers["x-l2lzo-model"] == "huggingfacetb/smollm2-135m" and one.headers["x-l2lzo-version"] == "1"
    assert "immutable" in one.headers["cache-control"]
    latest = client.get("/v1/models/HuggingFaceTB/SmolLM2-135M/versions/latest")
    assert latest.content == second and latest.headers["x-l2lzo-version"] == "2"
    assert latest.headers["cache-control"] == "no-cache"


def test_if_none_match(client):
    data = make_artifact("etag-model", seed=5)
    sha = _push(client, "etag-model", data).json()["sha256"]
    url = "/v1/models/etag-model/versions/latest"
    for value in (f'"{sha}"', f'W/"{sha}"', f'"0000", "{sha}"', f'"aaaa",W/"{sha}"', "*", sha):
        response = client.get(url, headers={"If-None-Match": value})
        assert response.status_code == 304, value
        assert response.content == b"" and response.headers["etag"] == f'"{sha}"'
        assert response.headers["x-l2lzo-version"] == "1"
    assert client.get(url, headers={"If-None-Match": '"0000"'}).content == data
    # A new version makes the client's copy of "latest" stale.
    newer = make_artifact("etag-model", seed=6)
    _push(client, "etag-model", newer)
    response = client.get(url, headers={"If-None-Match": f'"{sha}"'})
    assert response.status_code == 200 and response.content == newer


def test_etag_matching_rules():
    assert etag_matches('"abc"', "abc") and etag_matches('W/"abc"', "abc") and etag_matches(' "x" , "abc" ', "abc")
    assert etag_matches("*", "abc") and not etag_matches('"abcd"', "abc") and not etag_matches("", "abc")


def test_resolve(client):
    pushed = _push(client, "resolve-model", make_artifact("resolve-model", fingerprint=OTHER_FINGERPRINT)).json()
    hit = client.get("/v1/resolve", params={"fingerprint": OTHER_FINGERPRINT.upper()})
    assert hit.status_code == 200 and hit.json() == pushed
    _assert_error(client.get("/v1/resolve", params={"fingerprint": "12" * 32}), 404, "no policy for fingerprint")
    _assert_error(client.get("/v1/resolve", params={"fingerprint": "xyz"}), 400, "fingerprint: String should match")
    _assert_error(client.get("/v1/resolve"), 400, "fingerprint")


def test_auth_failures(client, readonly_client, registry):
    before = _stored_files(registry)
    data = make_artifact("auth-model")
    url = "/v1/models/auth-model/versions"
    for headers in ({}, _auth("wrong-token"), {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"},
                    _auth(TOKEN + "x"), {"Authorization": "Bearer é".encode()}):
        response = client.post(url, content=data, headers=headers)
        _assert_error(response, 401, "missing or wrong bearer token")
        assert response.headers["www-authenticate"] == "Bearer"
    _assert_error(readonly_client.post(url, content=data, headers=_auth()), 403, "uploads are disabled")
    assert _stored_files(registry) == before
    # The read-only server still serves reads.
    assert readonly_client.get("/healthz").status_code == 200


_TRAVERSALS = [
    "/v1/models/../../etc/passwd/versions/1",
    "/v1/models/..%2F..%2Fsecret.txt/versions/1",
    "/v1/models/%2e%2e/%2e%2e/versions/1",
    "/v1/models/%2e%2e%2fsecret.txt/versions",
    "/v1/models/%2Fetc%2Fpasswd/versions/1",
    "/v1/models//etc/passwd/versions",
    "/v1/models/a%5C..%5C..%5Csecret.txt/versions/1",
    "/v1/models/..\\..\\secret.txt/versions/1",
    "/v1/models/..%252F..%252Fsecret.txt/versions/1",
    "/v1/models/%00/versions",
    "/v1/models/secret.txt%00/versions",
    "/v1/models/..-/versions/1",
    "/v1/models/a/b/c/versions/1",
    "/v1/models/x/versions/..%2F..%2F..%2Fsecret.txt",
    "/v1/models/x/versions/%2e%2e",
]


def _raw_request(base_url: str, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """Send ``path`` byte for byte (httpx would normalise dot segments and encodings)."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("content-type", "")
    finally:
        connection.close()


@pytest.mark.parametrize("path", _TRAVERSALS)
def test_traversal_attempts_get_json_4xx(client, registry, workspace, path):
    before = _stored_files(registry)
    upload_path = path.rsplit("/versions", 1)[0] + "/versions"  # the same model part, on the upload route
    for method, target, body, headers in (("GET", path, None, {}),
                                          ("POST", upload_path, make_artifact(), _auth())):
        status, content, content_type = _raw_request(str(client.base_url), method, target, body, headers)
        assert 400 <= status < 500 and status != 405, (method, target, status, content)
        assert content_type == "application/json" and set(json.loads(content)) == {"error"}
        assert b"outside the registry" not in content and b"root:" not in content
    assert _stored_files(registry) == before
    assert {p.name for p in workspace.iterdir()} <= {"registry", "secret.txt"}


@pytest.mark.parametrize(("body", "message"), [
    (b"", "too short"),
    (b"definitely not safetensors", "not a safetensors file"),
    (make_artifact("bad-upload")[:-7], "truncated"),
    (make_artifact("bad-upload")[:-1] + b"\0", "data sha256 mismatch"),
    (make_artifact("another-model"), "base_model is 'another-model', not 'bad-upload'"),
    (raw_safetensors({"__metadata__": policy_metadata("bad-upload", recommended_lr="fast", schema_version="1",
                                                      created_at="2025-01-31T12:00:00Z"),
                      "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
     "recommended_lr must be a positive number, got 'fast'"),
])
def test_malformed_uploads_store_nothing(client, registry, body, message):
    before = _stored_files(registry)
    _assert_error(_push(client, "bad-upload", body), 422, message)
    assert _stored_files(registry) == before
    _assert_error(client.get("/v1/models/bad-upload/versions"), 404)


def test_oversized_uploads_get_413_and_store_nothing(client, registry):
    before = _stored_files(registry)
    too_big = b"\0" * (UPLOAD_LIMIT + 1)
    _assert_error(_push(client, "big-model", too_big), 413, f"upload is {UPLOAD_LIMIT + 1} bytes, limit {UPLOAD_LIMIT}")

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked, so only the stream count can catch it
        for _ in range(UPLOAD_LIMIT // 4096 + 4):
            yield b"\0" * 4096

    response = client.post("/v1/models/big-model/versions", content=chunks(), headers=_auth())
    assert "content-length" not in response.request.headers
    _assert_error(response, 413, f"over the limit of {UPLOAD_LIMIT} bytes")
    assert _stored_files(registry) == before
    # Within the limit, a chunked upload works.
    small = make_artifact("big-model")
    response = client.post("/v1/models/big-model/versions", content=iter([small[:100], small[100:]]), headers=_auth())
    assert response.status_code == 201, response.text


def test_unknown_things_get_json_errors(client):
    _push(client, "known-model", make_artifact("known-model"))
    _assert_error(client.get("/v1/models/nope/versions"), 404, "no policy for model 'nope'")
    _assert_error(client.get("/v1/models/nope/versions/latest"), 404, "no policy for model 'nope'")
    _assert_error(client.get("/v1/models/known-model/versions/99"), 404, "has no version 99 (latest is 1)")
    _assert_error(client.get("/v1/models/known-model/versions/abc"), 400, "version: String should match pattern")
    _assert_error(client.get("/v1/models/known-model/versions/0"), 400, "version: String should match pattern")
    _assert_error(client.get("/v2/nothing"), 404, "Not Found")
    _assert_error(client.delete("/v1/models/known-model/versions/1"), 405, "Method Not Allowed")


def test_corrupt_stored_file_is_a_server_error(client, registry):
    _push(client, "fragile-model", make_artifact("fragile-model"))
    path = Path(registry.root) / "models" / "fragile-model" / "v000001.safetensors"
    damaged = path.with_name("damaged")
    damaged.write_bytes(path.read_bytes()[:-1] + b"\x01")
    os.replace(damaged, path)
    _assert_error(client.get("/v1/models/fragile-model/versions/1"), 500, "data sha256 mismatch")
    _assert_error(client.get("/v1/models/fragile-model/versions/latest"), 404, "no policy")


def test_openapi_documents_every_endpoint(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/healthz", "/v1/models", "/v1/models/{model}/versions",
                                  "/v1/models/{model}/versions/{version}", "/v1/resolve"}
    upload = spec["paths"]["/v1/models/{model}/versions"]["post"]
    assert upload["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert {"201", "401", "403", "413", "422"} <= set(upload["responses"])
    assert upload["security"] == [{"HTTPBearer": []}]
    assert upload["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecordOut")
    assert "already holds exactly these bytes" in upload["responses"]["200"]["description"]
    assert upload["requestBody"]["content"]["application/octet-stream"]["schema"]["maxLength"] == UPLOAD_LIMIT
    download = spec["paths"]["/v1/models/{model}/versions/{version}"]["get"]
    assert "application/octet-stream" in download["responses"]["200"]["content"]
    assert {"304", "404"} <= set(download["responses"])
    # The server's real rules, declared (registry's patterns, the same text the server enforces).
    parameters = {p["name"]: p for p in download["parameters"]}
    assert parameters["model"]["schema"]["pattern"] == MODEL_ID_PATTERN
    assert parameters["version"]["schema"]["pattern"] == VERSION_PATTERN
    assert parameters["If-None-Match"]["in"] == "header"
    resolve = spec["paths"]["/v1/resolve"]["get"]
    assert resolve["parameters"][0]["schema"]["pattern"] == FINGERPRINT_PATTERN
    assert all(set(operations) <= {"get", "post"} for operations in spec["paths"].values())  # HEAD is implied
    assert "HTTPValidationError" not in json.dumps(spec)
    assert client.get("/docs").status_code == 200


# Built once: safetensors writes metadata keys in no fixed order, so each build gives other bytes.
KEY_ARTIFACT = make_artifact("key-model")


@pytest.mark.parametrize("path", [
    "/v1/models/%E2%84%AAey-model/versions",            # Kelvin sign K: lowercases to 'k'
    "/v1/models/%E2%84%AAey-model/versions/1",
    "/v1/models/key-model%1C/versions",                 # str.strip() removes \x1c ...
    "/v1/models/key-model%C2%85/versions/latest",       # ... and U+0085
    "/v1/models/%20key-model/versions",
    "/v1/models/key-model%09/versions",
    "/v1/models/https:%2F%2Fhuggingface.co%2Fkey-model/versions",
    "/v1/models/key-model%2F/versions",
    "/v1/models/key-model/versions/1%1C",
    "/v1/models/key-model/versions/latest%C2%85",
    "/v1/models/key-model/versions/%D9%A1",             # ARABIC-INDIC DIGIT ONE
    "/v1/models/key-model/versions/01",
    "/v1/models/key-model/versions/LATEST",
    f"/v1/resolve?fingerprint={FINGERPRINT}%1C",
    f"/v1/resolve?fingerprint=%20{FINGERPRINT}",
])
def test_ids_that_would_stand_for_other_ids_get_400(client, path):
    _push(client, "key-model", KEY_ARTIFACT)  # version 1 on the first run; the same bytes again later
    for method in ("GET", "HEAD") if "/resolve" in path or "/versions/" in path else ("GET", "HEAD", "POST"):
        body, headers = (make_artifact("key-model", seed=9), _auth()) if method == "POST" else (None, {})
        status, content, content_type = _raw_request(str(client.base_url), method, path, body, headers)
        assert status == 400, (method, path, status, content)
        if method != "HEAD":
            assert content_type == "application/json" and set(json.loads(content)) == {"error"}
    assert [v["version"] for v in client.get("/v1/models/key-model/versions").json()["versions"]] == [1]


def test_head_answers_wherever_get_does(client):
    data = make_artifact("head-model", seed=3)
    sha = _push(client, "head-model", data).json()["sha256"]
    for url in ("/healthz", "/v1/models", "/v1/models/head-model/versions", "/v1/models/head-model/versions/1",
                "/v1/models/head-model/versions/latest", f"/v1/resolve?fingerprint={FINGERPRINT}",
                "/v1/models/nope/versions", "/v1/models/head-model/versions/abc"):
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code, url
        assert head.content == b""
        assert {k: v for k, v in head.headers.items() if k != "date"} == {
            k: v for k, v in got.headers.items() if k != "date"}, url
    head = client.head("/v1/models/head-model/versions/1")
    assert head.headers["content-length"] == str(len(data)) and head.headers["etag"] == f'"{sha}"'
    assert client.head("/v1/models/head-model/versions/1", headers={"If-None-Match": f'"{sha}"'}).status_code == 304


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/models/some-model/versions", "GET, HEAD, POST"),
    ("PUT", "/v1/models/org/some-model/versions", "GET, HEAD, POST"),
    ("OPTIONS", "/v1/models/some-model/versions", "GET, HEAD, POST"),
    ("DELETE", "/v1/models/some-model/versions/1", "GET, HEAD"),
    ("POST", "/v1/models/some-model/versions/latest", "GET, HEAD"),
    ("POST", "/healthz", "GET, HEAD"),
    ("PATCH", "/v1/resolve", "GET, HEAD"),
])
def test_405_allow_lists_every_method_of_the_path(client, method, path, allowed):
    response = client.request(method, path)
    _assert_error(response, 405, "Method Not Allowed")
    assert response.headers["allow"] == allowed


def test_if_none_match_on_several_header_lines(client):
    data = make_artifact("lines-model", seed=4)
    sha = _push(client, "lines-model", data).json()["sha256"]
    url = "/v1/models/lines-model/versions/1"
    for lines in ([f'"{sha}"', '"0000"'], ['"0000"', f'"{sha}"'], ['"0000", "1111"', f'W/"{sha}"']):
        response = client.get(url, headers=[("If-None-Match", line) for line in lines])
        assert response.request.headers.get_list("if-none-match") == lines
        assert response.status_code == 304, lines
    response = client.get(url, headers=[("If-None-Match", '"0000"'), ("If-None-Match", '"1111"')])
    assert response.status_code == 200 and response.content == data


def test_identical_upload_returns_the_existing_version(client, registry):
    first, second = make_artifact("dup-model", seed=1), make_artifact("dup-model", seed=2)
    created = _push(client, "dup-model", first)
    assert created.status_code == 201
    stored = _stored_files(registry)
    for model in ("dup-model", "DUP-Model"):
        again = _push(client, model, first)
        assert again.status_code == 200, again.text
        assert again.json() == created.json() and again.headers["location"] == created.headers["location"]
    assert _stored_files(registry) == stored
    assert _push(client, "dup-model", second).status_code == 201
    assert _push(client, "dup-model", first).json()["version"] == 1
    assert [v["version"] for v in client.get("/v1/models/dup-model/versions").json()["versions"]] == [1, 2]


def test_large_downloads_are_streamed_from_local_and_fsspec_roots(client, registry):
    data = make_artifact("large-model", numbers=400_000)  # 1.6 MB: several stream pieces
    registry.push(data, "large-model")
    memory = Registry(f"memory://service-{os.getpid()}-{time.monotonic_ns()}")
    memory.push(data, "large-model")
    with serving(create_app(memory, token=None)) as url, httpx.Client(base_url=url, timeout=30) as fsspec_client:
        for http in (client, fsspec_client):
            response = http.get("/v1/models/large-model/versions/1")
            assert response.status_code == 200 and response.content == data
            assert response.headers["content-length"] == str(len(data))
            assert response.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'


def _read_until_closed(sock: socket.socket, began: float, limit: float) -> tuple[bytes, float]:
    """All the server sends until it closes the connection, and the seconds from ``began`` until it did."""
    sock.settimeout(max(0.1, began + limit - time.monotonic()))
    received = b""
    while chunk := sock.recv(65536):  # socket.timeout here: the server kept the connection open
        received += chunk
    return received, time.monotonic() - began


HEADER_TIMEOUT, BODY_TIMEOUT = 0.5, 1.5
# How late a closing may come on a loaded 2-core CI machine. Being late is load; closing early (before the
# deadline) or never (the reader's own limit) is the mechanism broken, so those bounds stay tight.
LATE = 5.0


def test_stalled_connections_are_closed_within_the_configured_time(registry):
    app = create_app(registry, token=TOKEN, max_upload_bytes=UPLOAD_LIMIT, body_timeout=BODY_TIMEOUT)
    upload = make_artifact("slow-model")
    head = (f"POST /v1/models/slow-model/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(upload)}\r\n\r\n").encode()
    stalls = {  # what the client sends, then nothing more
        "idle": b"",
        "partial headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        "after a response": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n",
        "upload body": head + upload[:100],
    }
    with serving(app, header_timeout=HEADER_TIMEOUT) as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))

        def stall(data: bytes) -> tuple[bytes, float]:
            # Each stall waits on its own thread, so its time is the server's closing, not this test's turn.
            with socket.create_connection(address) as sock:
                began = time.monotonic()
                sock.sendall(data)
                return _read_until_closed(sock, began, BODY_TIMEOUT + LATE + 5)

        with concurrent.futures.ThreadPoolExecutor(len(stalls)) as pool:
            futures = {name: pool.submit(stall, data) for name, data in stalls.items()}
            results = {name: future.result() for name, future in futures.items()}
    for name in ("idle", "partial headers", "after a response"):
        received, seconds = results[name]
        assert 0.9 * HEADER_TIMEOUT <= seconds <= HEADER_TIMEOUT + LATE, (name, seconds)
        assert received.count(b"HTTP/1.1 ") == (name == "after a response"), (name, received)
    received, seconds = results["upload body"]
    assert 0.9 * BODY_TIMEOUT <= seconds <= BODY_TIMEOUT + LATE, seconds
    assert received.startswith(b"HTTP/1.1 408 ") and b"upload body not received within 1.5 s" in received
    assert b"connection: close" in received.lower()


def test_requests_that_keep_coming_are_served_past_the_header_deadline(registry):
    """The deadlines bound stalls, not work: headers in pieces (each gap well inside the header deadline) and an
    upload whose body takes longer than the header deadline (far inside its own) are served."""
    header_timeout, body_timeout = 1.0, 10.0
    app = create_app(registry, token=TOKEN, max_upload_bytes=UPLOAD_LIMIT, body_timeout=body_timeout)
    upload = make_artifact("slow-model")
    head = (f"POST /v1/models/slow-model/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(upload)}\r\n\r\n").encode()
    with serving(app, header_timeout=header_timeout) as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        with socket.create_connection(address) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            time.sleep(header_timeout / 5)
            slow.sendall(b"Connection: close\r\n\r\n")
            assert _read_until_closed(slow, time.monotonic(), 30)[0].startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(address) as slow:
            slow.sendall(head)
            began = time.monotonic()
            for piece in (upload[:400], upload[400:800], upload[800:]):
                time.sleep(header_timeout * 0.4)
                slow.sendall(piece)
            assert time.monotonic() - began > header_timeout  # the body outlived the header deadline
            slow.settimeout(30)
            assert slow.recv(65536).startswith(b"HTTP/1.1 201 ")


def test_connections_beyond_the_limit_get_503(registry):
    with serving(create_app(registry, token=None), max_connections=2) as url:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        with socket.create_connection(address), socket.create_connection(address), \
                socket.create_connection(address) as third:
            time.sleep(0.2)  # let the server see all three
            third.sendall(request)
            assert _read_until_closed(third, time.monotonic(), 5)[0].startswith(b"HTTP/1.1 503 ")
        with socket.create_connection(address) as alone:
            alone.sendall(request)
            assert _read_until_closed(alone, time.monotonic(), 5)[0].startswith(b"HTTP/1.1 200 ")


def test_temp_file_of_a_killed_upload_is_gone_after_restart(tmp_path):
    root = tmp_path / "registry"
    artifact = tmp_path / "policy.safetensors"
    artifact.write_bytes(make_artifact("killed-model", numbers=3_000_000))
    with push_stopped_midway(root, artifact, "killed-model", "write"):
        temps = list((root / "models" / "killed-model").glob(".tmp-*"))
        assert len(temps) == 1
        with serving(create_app(Registry(root), token=None)):
            assert temps[0].exists()  # its writer is alive: not touched
    assert temps[0].exists()  # killed, not yet cleaned
    with serving(create_app(Registry(root), token=None)) as url:
        assert not temps[0].exists()
        _assert_error(httpx.get(f"{url}/v1/models/killed-model/versions"), 404, "no policy")
    assert Registry(root).verify() == []


# -- l2lzo serve -------------------------------------------------------------------------------------------------

def test_load_token(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert load_token(None) is None
    monkeypatch.setenv(TOKEN_ENV, "  from-env \n")
    assert load_token(None) == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    token_file.chmod(0o600)
    assert load_token(str(token_file)) == "from-file"
    token_file.write_text("  \n")
    with pytest.raises(RegistryError, match="is empty"):
        load_token(str(token_file))
    with pytest.raises(RegistryError, match="cannot read token file"):
        load_token(str(tmp_path / "missing"))


def test_serve_parser_defaults():
    parser = argparse.ArgumentParser(prog="l2lzo")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.registry, args.token_file) == ("127.0.0.1", 8000, None, None)
    assert (args.header_timeout, args.body_timeout, args.keep_alive_timeout, args.max_connections) == (
        10.0, 60.0, 5, 200)
    assert callable(args.func)
    for option, value in (("--header-timeout", "0"), ("--body-timeout", "-1"), ("--max-connections", "x")):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", option, value])


def test_serve_command_end_to_end(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)  # readable by others: served, with a warning
    log = tmp_path / "server.log"
    with service_process(log, "--registry", str(tmp_path / "registry"), "--token-file", str(token_file),
                         "--log-level", "warning", "--header-timeout", "1", "--body-timeout", "1.5") as (url, server), \
            httpx.Client(base_url=url, timeout=10) as http:
        address = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        idle, stalled, began = socket.create_connection(address), socket.create_connection(address), time.monotonic()
        stalled.sendall(f"POST /v1/models/minilm-l6/versions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                        "Content-Length: 1000\r\n\r\n".encode() + b"\0" * 10)
        assert http.get("/healthz").json() == {"status": "ok", "models": 0}
        assert _push(http, "minilm-l6", make_artifact("minilm-l6")).status_code == 201
        assert http.get("/v1/models/minilm-l6/versions/1").status_code == 200
        with idle, stalled:  # the timeouts given on the command line reached the server
            assert 0.9 <= _read_until_closed(idle, began, 10)[1] <= 3
            received, seconds = _read_until_closed(stalled, began, 10)
            assert received.startswith(b"HTTP/1.1 408 ") and 1.4 <= seconds <= 3.5
    assert server.returncode == 0, log.read_text()
    output = log.read_text()
    assert "readable by other users" in output and TOKEN not in output
    assert Registry(tmp_path / "registry").get("minilm-l6").version == 1


def test_serve_command_user_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "service", "--token-file", str(tmp_path / "missing")],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("l2lzo: error: cannot read token file")

"""The policy service: a FastAPI app over a ``registry.Registry``.

Endpoints (all errors are ``{"error": "<message>"}``; every GET also answers HEAD):

- ``GET  /healthz``                                  liveness and model count
- ``GET  /v1/models``                                every model with its latest version and version count
- ``GET  /v1/models/{model}/versions``               every version with its full metadata
- ``GET  /v1/models/{model}/versions/{version}``     the file (``version`` = number or ``latest``); ETag = sha256
- ``GET  /v1/resolve?fingerprint=HEX``               the latest version trained for that fingerprint
- ``POST /v1/models/{model}/versions``               upload raw safetensors bytes (bearer token); 201 for a new
                                                     version, 200 with the existing one for bytes already stored

Parameters are accepted exactly as the OpenAPI schema declares them (``registry.MODEL_ID_PATTERN``,
``VERSION_PATTERN``, ``FINGERPRINT_PATTERN``) or answered with 400: a model id in a URL is the id itself (any
ASCII case), so it can never name a path outside the registry nor quietly stand for another id.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, BinaryIO
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from registry import (
    FINGERPRINT_PATTERN,
    MODEL_ID_PATTERN,
    VERSION_PATTERN,
    CorruptArtifact,
    InvalidArtifact,
    InvalidModelId,
    InvalidRequest,
    NotFound,
    Registry,
    RegistryError,
    exact_model_id,
    model_dirname,
)
from service import limits

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
# Files up to this size are sent in one piece; larger ones are streamed in pieces of this size, so a download
# holds at most one piece in memory (plus the transport's 64 KiB write buffer).
_STREAM_CHUNK = 256 * 1024
# Most specific first: the first isinstance match decides the status.
_STATUS = (
    (NotFound, 404),
    (InvalidModelId, 400),
    (InvalidRequest, 400),
    (InvalidArtifact, 422),
    (CorruptArtifact, 500),  # damage on the server's side, not the client's fault
    (RegistryError, 400),
)
# A numbered version never changes, so caches may keep it for good; "latest" must be revalidated (cheap: 304).
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
# Module level: FastAPI resolves the (string) annotations that use it against this module's globals.
_bearer = HTTPBearer(auto_error=False, description="the server's upload token")
_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_OCTET_STREAM = "application/octet-stream"


class _AnyCharacters(PathConvertor):
    """Starlette's ``path`` convertor, but across line breaks too, so that every model id in a URL reaches the id
    check and gets its 400 (with ``path``, an id holding a line feed fails to route: 404)."""

    regex = "(?s:.*)"


register_url_convertor("model_id", _AnyCharacters())


async def _model_id(model: Annotated[str, Path(
        description="model id, e.g. 'smollm2-135m' or 'HuggingFaceTB/SmolLM2-135M' (ASCII; case-insensitive)",
        examples=["smollm2-135m"], json_schema_extra={"pattern": MODEL_ID_PATTERN})]) -> str:
    # The pattern is declared, not checked by pydantic (its regex engine has no look-ahead): exact_model_id
    # enforces it (InvalidModelId -> 400). Async only so that FastAPI does not send it to a worker thread.
    return exact_model_id(model)


ModelId = Annotated[str, Depends(_model_id)]


class ErrorBody(BaseModel):
    """Every error response."""

    error: str = Field(description="what went wrong, in one line")


class Health(BaseModel):
    """``GET /healthz``."""

    status: str = Field(examples=["ok"])
    models: int = Field(description="number of models with at least one version")


class ModelOut(BaseModel):
    """One model in ``GET /v1/models``."""

    model: str = Field(description="normalised model id", examples=["smollm2-135m"])
    latest: int = Field(description="highest version")
    count: int = Field(description="number of versions")
    sha256: str = Field(description="sha256 of the latest version's file (its ETag)")
    created_at: str = Field(description="the latest version's created_at (ISO 8601 UTC)")


class ModelList(BaseModel):
    """``GET /v1/models``."""

    models: list[ModelOut]


class RecordOut(BaseModel):
    """One stored version."""

    model: str = Field(description="normalised model id")
    version: int
    sha256: str = Field(description="sha256 of the whole file (its ETag)")
    size: int = Field(description="file size in bytes")
    metadata: dict[str, str] = Field(description="the artifact's safetensors header metadata")


class VersionList(BaseModel):
    """``GET /v1/models/{model}/versions``."""

    model: str
    versions: list[RecordOut] = Field(description="oldest first")


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorBody} for code in codes}


def create_app(registry: Registry, *, token: str | None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               body_timeout: float = limits.BODY_TIMEOUT) -> FastAPI:
    """The service over ``registry``.

    ``token``: the bearer token that uploads must present; None disables uploads (403). Uploads larger than
    ``max_upload_bytes`` are refused with 413 before anything is stored; the registry's own limits also apply.
    An upload body not complete ``body_timeout`` seconds after its headers gets 408 and the connection is closed.
    At start-up, temp files left by interrupted pushes are deleted (``Registry.remove_stale_temp_files``).
    """
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        log.info("serving policy registry %s", registry.root)
        if token is None:
            log.warning("uploads are disabled: no token configured (--token-file or L2LZO_REGISTRY_TOKEN)")
        try:
            await run_in_threadpool(registry.remove_stale_temp_files)
        except OSError as exc:  # e.g. a read-only root: serving it is still fine
            log.warning("cannot remove stale temp files from %s: %s", registry.root, exc.strerror or exc)
        yield

    app = FastAPI(title="l2lzo policy registry", version="1", lifespan=lifespan,
                  description="Learned zeroth-order optimizer policies, keyed by base model, with immutable "
                              "versions. Downloads carry ETag = sha256 of the file.")
    _install_error_handlers(app)
    _document_validation_errors_as_400(app)

    @_get(app, "/healthz", response_model=Health, tags=["meta"])
    def healthz() -> dict:
        """Liveness, and how many models the registry holds."""
        return {"status": "ok", "models": len(registry.models())}

    @_get(app, "/v1/models", response_model=ModelList, tags=["policies"])
    def list_models() -> dict:
        """Every model with its latest version and number of versions."""
        return {"models": [s.to_json() for s in registry.summaries()]}

    @_get(app, "/v1/models/{model:model_id}/versions", response_model=VersionList, tags=["policies"],
          responses=_errors(400, 404))
    def list_versions(model: ModelId) -> dict:
        """Every version of a model with its full metadata, oldest first."""
        records = registry.versions(model)
        return {"model": records[0].model, "versions": [r.to_json() for r in records]}

    @_get(
        app, "/v1/models/{model:model_id}/versions/{version}", response_class=Response, tags=["policies"],
        responses={
            200: {"description": "the policy file", "content": _BINARY, "headers": {
                "ETag": {"description": "quoted sha256 of the file", "schema": {"type": "string"}},
                "X-L2LZO-Model": {"description": "normalised model id", "schema": {"type": "string"}},
                "X-L2LZO-Version": {"description": "the version served", "schema": {"type": "integer"}},
            }},
            304: {"description": "If-None-Match matched: the client's copy is current (no body)"},
            **_errors(400, 404, 500),
        },
        # Read from every header line (_download_response); declared here: a scalar Header() reads the first only.
        openapi_extra={"parameters": [{
            "name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "ETags the client has: '*' or quoted tags, comma-separated, on one line or several"}]},
    )
    async def download(request: Request, model: ModelId,
                       version: Annotated[str, Path(pattern=VERSION_PATTERN, examples=["latest", "1"],
                                                    description="a version number, or 'latest'")]) -> Response:
        """The policy file of one version (a number, or ``latest``), streamed; its ETag is its sha256.

        The bytes are those the registry verified against that sha256 (once per server process and file; see
        ``Registry.open_verified``), so a client that checks the download against the ETag detects any damage.
        """
        # On a local root a cached answer costs a listdir and a stat or two: cheaper in the event loop than a hop
        # to a worker thread, and fairer to 50 concurrent clients (p99). Other roots may wait on the network.
        if registry.is_local:
            return _download_response(registry, request, model, version)
        return await run_in_threadpool(_download_response, registry, request, model, version)

    @_get(app, "/v1/resolve", response_model=RecordOut, tags=["policies"], responses=_errors(400, 404))
    def resolve(fingerprint: Annotated[str, Query(pattern=FINGERPRINT_PATTERN, examples=["ab" * 32],
                                                  description="architecture fingerprint (hex, either case)")]
                ) -> dict:
        """The latest version whose ``fingerprint`` metadata matches (how a derivative finds its base's policy)."""
        record = registry.resolve(fingerprint)
        if record is None:
            raise NotFound(f"no policy for fingerprint {fingerprint.lower()}")
        return record.to_json()

    location_header = {"Location": {"description": "the version's download URL", "schema": {"type": "string"}}}

    @app.post(
        "/v1/models/{model:model_id}/versions", status_code=201, response_model=RecordOut, tags=["policies"],
        responses={201: {"description": "stored as a new version", "headers": location_header},
                   200: {"model": RecordOut, "headers": location_header,
                         "description": "a valid version of this model already holds exactly these bytes: that "
                                        "version, and nothing stored (pushing the same file twice is harmless)"},
                   **_errors(400, 401, 403, 408, 413, 422)},
        openapi_extra={"requestBody": {
            "required": True, "description": "the policy artifact (.safetensors bytes): its base_model metadata "
                                             f"must name this model; at most {max_upload_bytes} bytes",
            "content": {_OCTET_STREAM: {"schema": {"type": "string", "format": "binary",
                                                   "maxLength": max_upload_bytes}}}}},
    )
    async def upload(model: ModelId, request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> JSONResponse:
        """Store the body, a policy artifact, as the next version of ``model``: 201 and the new version, or 200
        and the existing version when a version of ``model`` already holds exactly these bytes."""
        if token is None:
            raise HTTPException(403, "uploads are disabled on this server (start it with --token-file or "
                                     "L2LZO_REGISTRY_TOKEN)")
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        data = await _read_capped(request, max_upload_bytes, body_timeout)
        record, created = await run_in_threadpool(registry.push, data, model)
        location = f"/v1/models/{quote(record.model, safe='/')}/versions/{record.version}"
        return JSONResponse(record.to_json(), status_code=201 if created else 200, headers={"Location": location})

    return app


def _download_response(registry: Registry, request: Request, model: str, version: str) -> Response:
    record = registry.get(model, version)
    headers = {"ETag": f'"{record.sha256}"', "X-L2LZO-Model": record.model, "X-L2LZO-Version": str(record.version),
               "Cache-Control": _REVALIDATE if version == "latest" else _IMMUTABLE}
    # Several header lines mean the same as one line joining them with commas (RFC 9110, section 5.3).
    if_none_match = ",".join(request.headers.getlist("if-none-match"))
    if if_none_match and etag_matches(if_none_match, record.sha256):
        return Response(status_code=304, headers=headers)
    filename = f"{model_dirname(record.model)}-v{record.version}.safetensors"
    headers |= {"Content-Disposition": f'attachment; filename="{filename}"', "Content-Length": str(record.size)}
    if request.method == "HEAD":
        return Response(media_type=_OCTET_STREAM, headers=headers)
    source = registry.open_verified(record)
    if record.size > _STREAM_CHUNK:
        return StreamingResponse(_pieces(source), media_type=_OCTET_STREAM, headers=headers)
    with source:
        return Response(source.read(), media_type=_OCTET_STREAM, headers=headers)


def _get(app: FastAPI, path: str, **options) -> Callable:
    """``app.get`` that also answers HEAD, as RFC 9110 asks wherever GET works (uvicorn drops the body).

    The HEAD route stays out of the OpenAPI schema: HEAD is implied by GET, and one function on two documented
    routes would give two operations the same id.
    """
    def register(endpoint: Callable) -> Callable:
        app.head(path, include_in_schema=False, **options)(endpoint)
        return app.get(path, **options)(endpoint)
    return register


def _pieces(source: BinaryIO) -> Iterator[bytes]:
    with source:
        while piece := source.read(_STREAM_CHUNK):
            yield piece


def etag_matches(if_none_match: str, sha256: str) -> bool:
    """Whether an ``If-None-Match`` value (``*``, or a list of quoted, possibly weak ``W/`` tags) names ``sha256``."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.removeprefix("W/").strip('"') == sha256:
            return True
    return False


async def _read_capped(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refusing anything over ``limit`` bytes before it is all read (413), and a body not
    complete within ``timeout`` seconds (408, and the connection is closed: the rest of a stalled body may never
    come)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length")
        if int(declared) > limit:
            raise HTTPException(413, f"upload is {int(declared)} bytes, limit {limit}")
    chunks, total = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise HTTPException(413, f"upload is over the limit of {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected during upload") from None
    except TimeoutError:
        raise HTTPException(408, f"upload body not received within {timeout:g} s",
                            headers={"Connection": "close"}) from None
    return b"".join(chunks)


def _document_validation_errors_as_400(app: FastAPI) -> None:
    """Make the OpenAPI spec say what the handlers do: request validation errors are 400 ``ErrorBody``.

    FastAPI documents them as 422 ``HTTPValidationError`` on every route with parameters; 422 here means an
    invalid artifact, and every route that can fail validation already declares 400.
    """
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    response = operation.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in str(response.get("content")):
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema

    app.openapi = openapi


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route answers on the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def registry_error(_: Request, exc: RegistryError) -> JSONResponse:
        status = next(code for kind, code in _STATUS if isinstance(exc, kind))
        if status >= 500:
            log.error("%s", exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only (GET on .../versions,
            # where POST works too).
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(app, request))}
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response, so the server still logs the traceback.
        return JSONResponse({"error": "internal server error"}, status_code=500)

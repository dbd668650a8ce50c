"""The policy service: a FastAPI app over a ``registry.Registry``.

Endpoints (all errors are ``{"error": "<message>"}``):

- ``GET  /healthz``                                  liveness and model count
- ``GET  /v1/models``                                every model with its latest version and version count
- ``GET  /v1/models/{model}/versions``               every version with its full metadata
- ``GET  /v1/models/{model}/versions/{version}``     the file (``version`` = number or ``latest``); ETag = sha256
- ``GET  /v1/resolve?fingerprint=HEX``               the latest version trained for that fingerprint
- ``POST /v1/models/{model}/versions``               upload raw safetensors bytes (bearer token)

Model ids may contain one ``/`` (``org/name``); they are normalised with ``registry.normalize_model_id``, which
rejects anything that could name a path outside the registry.
"""

from __future__ import annotations

import hmac
import logging
from contextlib import asynccontextmanager
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from registry import (
    CorruptArtifact,
    InvalidArtifact,
    InvalidModelId,
    InvalidRequest,
    NotFound,
    Registry,
    RegistryError,
    model_dirname,
    normalize_model_id,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 16 * 1024 * 1024
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


def create_app(registry: Registry, *, token: str | None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> FastAPI:
    """The service over ``registry``.

    ``token``: the bearer token that uploads must present; None disables uploads (403). Uploads larger than
    ``max_upload_bytes`` are refused with 413 before anything is stored; the registry's own limits also apply.
    """
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        log.info("serving policy registry %s", registry.root)
        if token is None:
            log.warning("uploads are disabled: no token configured (--token-file or L2LZO_REGISTRY_TOKEN)")
        yield

    app = FastAPI(title="l2lzo policy registry", version="1", lifespan=lifespan,
                  description="Learned zeroth-order optimizer policies, keyed by base model, with immutable "
                              "versions. Downloads carry ETag = sha256 of the file.")
    _install_error_handlers(app)
    _document_validation_errors_as_400(app)

    @app.get("/healthz", response_model=Health, tags=["meta"])
    def healthz() -> dict:
        """Liveness, and how many models the registry holds."""
        return {"status": "ok", "models": len(registry.models())}

    @app.get("/v1/models", response_model=ModelList, tags=["policies"])
    def list_models() -> dict:
        """Every model with its latest version and number of versions."""
        return {"models": [s.to_json() for s in registry.summaries()]}

    @app.get("/v1/models/{model:path}/versions", response_model=VersionList, tags=["policies"],
             responses=_errors(400, 404))
    def list_versions(model: str) -> dict:
        """Every version of a model with its full metadata, oldest first."""
        records = registry.versions(model)
        return {"model": records[0].model, "versions": [r.to_json() for r in records]}

    @app.get(
        "/v1/models/{model:path}/versions/{version}", response_class=Response, tags=["policies"],
        responses={
            200: {"description": "the policy file", "content": _BINARY, "headers": {
                "ETag": {"description": "quoted sha256 of the file", "schema": {"type": "string"}},
                "X-L2LZO-Model": {"description": "normalised model id", "schema": {"type": "string"}},
                "X-L2LZO-Version": {"description": "the version served", "schema": {"type": "integer"}},
            }},
            304: {"description": "If-None-Match matched: the client's copy is current (no body)"},
            **_errors(400, 404, 500),
        },
    )
    def download(model: str, version: Annotated[str, Path(description="a version number, or 'latest'")],
                 if_none_match: Annotated[str | None, Header(description="ETags the client has")] = None
                 ) -> Response:
        """The policy file of one version (a number, or ``latest``)."""
        record = registry.get(model, version)
        headers = {"ETag": f'"{record.sha256}"', "X-L2LZO-Model": record.model,
                   "X-L2LZO-Version": str(record.version),
                   "Cache-Control": _REVALIDATE if version.strip().lower() == "latest" else _IMMUTABLE}
        if if_none_match is not None and etag_matches(if_none_match, record.sha256):
            return Response(status_code=304, headers=headers)
        data = registry.read_bytes(record)
        filename = f"{model_dirname(record.model)}-v{record.version}.safetensors"
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.get("/v1/resolve", response_model=RecordOut, tags=["policies"], responses=_errors(400, 404))
    def resolve(fingerprint: Annotated[str, Query(min_length=1, max_length=128,
                                                  description="architecture fingerprint (hex)")]) -> dict:
        """The latest version whose ``fingerprint`` metadata matches (how a derivative finds its base's policy)."""
        record = registry.resolve(fingerprint)
        if record is None:
            raise NotFound(f"no policy for fingerprint {fingerprint.strip().lower()}")
        return record.to_json()

    @app.post(
        "/v1/models/{model:path}/versions", status_code=201, response_model=RecordOut, tags=["policies"],
        responses={201: {"description": "stored; Location names the new version",
                         "headers": {"Location": {"schema": {"type": "string"}}}},
                   **_errors(400, 401, 403, 413, 422)},
        openapi_extra={"requestBody": {"required": True, "description": "the policy artifact (.safetensors bytes)",
                                       "content": _BINARY}},
    )
    async def upload(model: str, request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> JSONResponse:
        """Store a new version of ``model``; the body is the raw artifact, its base_model must match."""
        if token is None:
            raise HTTPException(403, "uploads are disabled on this server (start it with --token-file or "
                                     "L2LZO_REGISTRY_TOKEN)")
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        model = normalize_model_id(model)
        data = await _read_capped(request, max_upload_bytes)
        record = await run_in_threadpool(registry.push, data, model)
        location = f"/v1/models/{quote(record.model, safe='/')}/versions/{record.version}"
        return JSONResponse(record.to_json(), status_code=201, headers={"Location": location})

    return app


def etag_matches(if_none_match: str, sha256: str) -> bool:
    """Whether an ``If-None-Match`` value (``*``, or a list of quoted, possibly weak ``W/`` tags) names ``sha256``."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*":
            return True
        if tag.removeprefix("W/").strip('"') == sha256:
            return True
    return False


async def _read_capped(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, "invalid Content-Length")
        if int(declared) > limit:
            raise HTTPException(413, f"upload is {int(declared)} bytes, limit {limit}")
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise HTTPException(413, f"upload is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected during upload") from None
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


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def registry_error(_: Request, exc: RegistryError) -> JSONResponse:
        status = next(code for kind, code in _STATUS if isinstance(exc, kind))
        if status >= 500:
            log.error("%s", exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response, so the server still logs the traceback.
        return JSONResponse({"error": "internal server error"}, status_code=500)

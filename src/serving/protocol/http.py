"""HTTP/REST adapter: OIP V2 routes plus Triton's config, statistics and repository index.

One exception handler maps every ``ServingError`` through ``protocol.status``; FastAPI's
validation errors and unknown routes are answered in the same ``{"error": ...}`` shape.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import ErrorKind, InvalidInputError, PayloadTooLargeError, ServingError
from serving.protocol import rest_v2
from serving.protocol.status import RETRY_AFTER_S, http_status
from serving.service import InferenceService, triton_stats

log = logging.getLogger(__name__)

JSON = "application/json"


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(doc, separators=(",", ":")), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: ServingError, request_id: str = "") -> Response:
    """The one mapping from a core error to an HTTP answer."""
    status = http_status(exc.kind)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.kind is ErrorKind.OVERLOADED else None
    message = exc.message
    if exc.kind is ErrorKind.INTERNAL:
        message = f"internal error (request id {request_id or 'unknown'})"
    return _json({"error": message}, int(status), headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(rest_v2.HEADER_LENGTH)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"Inference-Header-Content-Length must be an integer, got {raw!r}") from None
    if value == 0:
        raise InvalidInputError(
            "Inference-Header-Content-Length: 0 (a raw binary request) is not supported; send a JSON header"
        )
    return value


def build_http_app(service: InferenceService, *, max_request_bytes: int = 64 * 1024 * 1024) -> FastAPI:
    """The REST front end of ``service``."""
    app = FastAPI(title="serving", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> Response:
        return error_response(exc, request.headers.get("x-request-id", ""))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return error_response(InvalidInputError(f"invalid request: {exc.errors()}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _json({"error": str(exc.detail)}, exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        log.exception("unhandled error serving %s (request id %s)", request.url.path, request_id)
        return error_response(ServingError("unexpected"), request_id)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return _json({"live": service.live()})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        ok = service.ready()
        return _json({"ready": ok}, 200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json(service.server_metadata())

    @app.get("/v2/models/stats")
    async def all_stats() -> Response:
        return _json(triton_stats(service.statistics()))

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str = "") -> Response:
        return _json(rest_v2.metadata_json(service.model_metadata(name, version)))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str = "") -> Response:
        ok = service.model_ready(name, version)
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    @app.get("/v2/models/{name}/config")
    @app.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(name: str, version: str = "") -> Response:
        return _json(service.model_config(name, version))

    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{version}/stats")
    async def model_stats(name: str, version: str = "") -> Response:
        return _json(triton_stats(service.statistics(name, version)))

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        body = await _read_body(request, max_request_bytes)
        ready_only = False
        if body.strip():
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
            if not isinstance(doc, dict):
                raise InvalidInputError("request body must be a JSON object")
            ready_only = bool(doc.get("ready", False))
        rows = service.repository_index(ready_only)
        return _json([{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows])

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str = "") -> Response:
        with service.track(name, version, "http", request.headers) as tracker:
            header_length = _header_length(request)
            body = await _read_body(request, max_request_bytes)
            core_request = rest_v2.to_core(body, header_length, name, version)
            response = await service.infer(core_request)
            encoded = rest_v2.from_core(response, core_request)
            tracker.served_version = response.model_version
        if encoded.header_length is None:
            return Response(encoded.body, media_type=JSON)
        return Response(
            encoded.body,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(encoded.header_length)},
        )

    return app

"""HTTP/REST adapter: OIP V2 routes plus Triton's config, statistics and repository index, as
a bare ASGI application.

Why not FastAPI: its routing, dependency injection and response classes run on every
request; the V2 routes are a dozen fixed paths, so a ``split("/")`` router and two ASGI
messages per answer do the same work (bench/results/online.md has the measured rates).

One function maps every ``ServingError`` to an answer (:func:`error_response`, codes from
``protocol.status``). Every answer carries ``X-Request-ID``: the client's, or one made here,
the same id the logs and an internal error's message carry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving import web
from serving.auth import AccessPolicy, Authenticator
from serving.config.server import MAX_REQUEST_BYTES, CorsConfig
from serving.control.admin import OperatorCommands
from serving.errors import ErrorKind, InvalidInputError, ModelNotFoundError, PayloadTooLargeError, ServingError
from serving.protocol import admin_json, openapi, rest_v2, triton
from serving.protocol.cors import CorsPolicy
from serving.protocol.status import REFUSAL_PACE_S, RETRY_AFTER_S, grpc_code, http_status
from serving.service.api import InferenceService
from serving.telemetry import live
from serving.telemetry.requests import client_request_id

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LiveSource = Callable[[], Awaitable[list[dict[str, Any]]]]
"""Every replica's ``live_snapshot()`` (the deploy layer reads them from Ray's GCS)."""

MAX_HEADER_BYTES = 64 * 1024
"""Request headers larger than this in all get 431 (names and values summed)."""

JSON = b"application/json"
OCTETS = b"application/octet-stream"
TEXT = b"text/plain; charset=utf-8"


class Answer:
    """One HTTP answer: status, body, content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        status: int = 200,
        content_type: bytes = JSON,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers or []


def _json(doc: Any, status: int = 200) -> Answer:
    return Answer(json.dumps(doc, separators=(",", ":")).encode(), status)


def error_response(exc: ServingError, request_id: str) -> Answer:
    """The one mapping from a core error to an HTTP answer."""
    status = int(http_status(exc.kind))
    message = exc.message
    if exc.kind is ErrorKind.INTERNAL:
        message = f"internal error (request id {request_id})"
    answer = _json({"error": message}, status)
    if exc.kind is ErrorKind.OVERLOADED:
        answer.headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    elif exc.kind is ErrorKind.UNAUTHENTICATED:
        answer.headers.append((b"www-authenticate", b'Bearer realm="serving"'))
    return answer


class Headers:
    """The few request headers the routes read, decoded once."""

    __slots__ = ("authorization", "carrier", "content_length", "header_length", "origin")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.content_length: bytes | None = None
        self.header_length: bytes | None = None
        self.origin: str | None = None
        self.authorization: str | None = None
        self.carrier: dict[str, str] = {}
        for key, value in raw:
            if key == b"content-length":
                self.content_length = value
            elif key == b"inference-header-content-length":
                self.header_length = value
            elif key == b"origin":
                self.origin = value.decode("latin-1")
            elif key == b"authorization":
                self.authorization = value.decode("latin-1")
            elif key in (b"x-request-id", b"traceparent", b"tracestate"):
                self.carrier[key.decode("latin-1")] = value.decode("latin-1")


def _header_length(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInputError(f"Inference-Header-Content-Length must be an integer, got {raw[:32]!r}") from None
    if value == 0:
        raise InvalidInputError(
            "Inference-Header-Content-Length: 0 (a raw binary request) is not supported; send a JSON header"
        )
    return value


class HttpApp:
    """The REST front end of ``service`` (an ASGI 3 application).

    ``draining``: set by the server while it stops; answers then carry ``Connection: close``
    so keep-alive clients reconnect to a replica that stays, and readiness answers 503.
    """

    def __init__(
        self,
        service: InferenceService,
        *,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        cors: CorsConfig | None = None,
        live: LiveSource | None = None,
        auth: Authenticator | None = None,
        protect_health: bool = False,
        probe_token: str | None = None,
        admin: OperatorCommands | None = None,
    ) -> None:
        self.service = service
        self.admin = admin
        """Operator commands (``/v2/admin/...``, repository load/unload); None answers them 501."""
        self.access = AccessPolicy(auth, protect_health, probe_token)
        self.max_request_bytes = max_request_bytes
        self.cors = CorsPolicy(cors) if cors is not None and cors.enabled else None
        self.live = live
        self.draining = False
        self.in_flight = 0
        self._assets = web.assets()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        self.in_flight += 1
        headers = Headers(scope["headers"])
        request_id = client_request_id(headers.carrier.get("x-request-id"))
        try:
            try:
                if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
                    answer = _json({"error": f"request headers exceed {MAX_HEADER_BYTES} bytes"}, 431)
                elif scope["method"] == "OPTIONS":
                    answer = self._preflight(headers)
                else:
                    answer = await self._route(scope, receive, headers, request_id)
            except _MethodNotAllowed as exc:
                answer = _json({"error": exc.message}, 405)
                answer.headers.append((b"allow", exc.allowed.encode()))
            except ServingError as exc:
                if exc.kind is ErrorKind.OVERLOADED:
                    await asyncio.sleep(REFUSAL_PACE_S)
                answer = error_response(exc, request_id)
            except Exception:
                log.exception("unhandled error serving %s (request id %s)", scope.get("path", ""), request_id)
                answer = error_response(ServingError("unexpected"), request_id)
            response_headers = [
                (b"content-type", answer.content_type),
                (b"content-length", str(len(answer.body)).encode()),
                (b"x-request-id", request_id.encode("latin-1")),
                *answer.headers,
            ]
            if self.draining:
                response_headers.append((b"connection", b"close"))
            preflight = scope["method"] == "OPTIONS"  # answered with its own CORS headers
            if (
                headers.origin is not None
                and self.cors is not None
                and not preflight
                and self.cors.allows(headers.origin)
            ):
                response_headers += self.cors.response_headers(headers.origin)
            await send({"type": "http.response.start", "status": answer.status, "headers": response_headers})
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            self.in_flight -= 1

    async def _read_body(self, receive: Receive, headers: Headers) -> bytes:
        """The whole body, at most ``max_request_bytes``.

        Raises:
            PayloadTooLargeError: the body is larger (after reading the rest of it, so that the
                client, still sending, reads the 413 instead of a broken connection).
            InvalidInputError: the client went away mid-body.
        """
        limit = self.max_request_bytes
        declared = headers.content_length
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _discard(receive, limit)
            raise PayloadTooLargeError(f"request body of {declared.decode()} bytes exceeds the limit of {limit} bytes")
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            return body
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidInputError("client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _discard(receive, limit)
                raise PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _preflight(self, headers: Headers) -> Answer:
        """OPTIONS: a CORS preflight (204 for an allowed origin, 403 otherwise), or a plain
        OPTIONS without an origin (204 with ``Allow``)."""
        if headers.origin is None:
            return Answer(b"", 204, headers=[(b"allow", b"GET, POST, OPTIONS")])
        if self.cors is None or not self.cors.allows(headers.origin):
            return _json(
                {"error": f"origin {headers.origin[:200]!r} is not allowed (server setting cors.allow_origins)"}, 403
            )
        return Answer(b"", 204, headers=self.cors.preflight_headers(headers.origin))

    async def _route(self, scope: Scope, receive: Receive, headers: Headers, request_id: str) -> Answer:
        parts = scope["path"].rstrip("/").split("/")
        method = scope["method"]
        if len(parts) >= 2 and parts[0] == "" and parts[1] == "ui":
            _expect(method, "GET")
            if parts[2:] == ["api", "stats"]:
                self._check(headers, all_models="the server's statistics")
            return await self._ui(parts[2:], scope["path"])
        if len(parts) == 3 and parts[:2] == ["", "-"] and parts[2] in ("healthz", "routes"):
            _expect(method, "GET")
            self._check_health(headers)
            return self._serve_proxy_health(parts[2])
        if len(parts) < 2 or parts[0] != "" or parts[1] != "v2":
            raise ModelNotFoundError(f"no route {scope['path'][:200]!r}")
        rest = parts[2:]
        if rest == ["openapi.json"]:
            _expect(method, "GET")
            return Answer(openapi.document_bytes())
        if rest and rest[0] == "models" and len(rest) >= 2:
            name = rest[1]
            tail = rest[2:]
            version = ""
            if len(tail) >= 2 and tail[0] == "versions":
                version, tail = tail[1], tail[2:]
            if name == "stats" and not tail and not version:
                _expect(method, "GET")
                self._check(headers, all_models="the statistics of every model")
                return _json(triton.stats_json(self.service.statistics()))
            self._check(headers, model=name)
            action = tail[0] if len(tail) == 1 else ("" if not tail else None)
            if action == "infer":
                _expect(method, "POST")
                return await self._infer(scope, receive, headers, request_id, name, version)
            if action == "":
                _expect(method, "GET")
                return _json(rest_v2.metadata_json(self.service.model_metadata(name, version)))
            if action == "ready":
                _expect(method, "GET")
                ok = self.service.model_ready(name, version)
                return _json({"name": name, "ready": ok}, 200 if ok else 503)
            if action == "config":
                _expect(method, "GET")
                return _json(triton.config_json(self.service.model_config(name, version)))
            if action == "stats":
                _expect(method, "GET")
                return _json(triton.stats_json(self.service.statistics(name, version)))
        elif not rest:
            _expect(method, "GET")
            self._check(headers)
            return _json(self.service.server_metadata())
        elif rest == ["health", "live"]:
            _expect(method, "GET")
            self._check_health(headers)
            return _json({"live": self.service.live()})
        elif rest == ["health", "ready"]:
            _expect(method, "GET")
            self._check_health(headers)
            ok = self.service.ready() and not self.draining
            return _json({"ready": ok}, 200 if ok else 503)
        elif rest == ["repository", "index"]:
            _expect(method, "POST")
            self._check(headers, all_models="the repository index")
            return await self._repository_index(receive, headers)
        elif len(rest) == 4 and rest[:2] == ["repository", "models"] and rest[3] in ("load", "unload"):
            _expect(method, "POST")
            who = self._admin(headers, scope, f"{rest[3]}ing a model")
            body = await self._read_body(receive, headers)
            return _json(await admin_json.repository_action(self.admin, rest[3], rest[2], body, who))
        elif rest and rest[0] == "admin":
            return await self._admin_route(rest[1:], method, scope, receive, headers)
        raise ModelNotFoundError(f"no route {scope['path'][:200]!r}")

    @property
    def protect_health(self) -> bool:
        return self.access.protect_health

    @protect_health.setter
    def protect_health(self, value: bool) -> None:
        self.access.protect_health = value

    @property
    def probe_token(self) -> str | None:
        return self.access.probe_token

    @probe_token.setter
    def probe_token(self, value: str | None) -> None:
        self.access.probe_token = value

    def _check(self, headers: Headers, *, model: str = "", all_models: str = "") -> None:
        self.access.check(headers.authorization, model=model, all_models=all_models)

    def _check_health(self, headers: Headers) -> None:
        self.access.check_health(headers.authorization)

    def _admin(self, headers: Headers, scope: Scope, what: str) -> str:
        client = scope.get("client")
        return self.access.check_admin(headers.authorization, what, f"anonymous@{client[0]}" if client else "anonymous")

    async def _admin_route(
        self, rest: list[str], method: str, scope: Scope, receive: Receive, headers: Headers
    ) -> Answer:
        """``/v2/admin/...``: what ``serving models|promote|rollback|traffic|shadow`` call."""
        if rest == ["models"]:
            _expect(method, "GET")
            self._admin(headers, scope, "reading the model lifecycle state")
            return _json({"models": admin_json.commands(self.admin).overview()})
        if rest == ["audit"]:
            _expect(method, "GET")
            self._admin(headers, scope, "reading the audit log")
            limit = admin_json.query_int(scope.get("query_string", b""), "limit", 100)
            return _json({"entries": await admin_json.commands(self.admin).audit(limit)})
        if len(rest) == 3 and rest[0] == "models" and rest[2] in admin_json.ACTIONS:
            _expect(method, "POST")
            who = self._admin(headers, scope, f"{rest[2]} on a model")
            body = await self._read_body(receive, headers)
            return _json(await admin_json.routing_action(self.admin, rest[2], rest[1], body, who))
        raise ModelNotFoundError(f"no route {scope['path'][:200]!r}")

    async def _ui(self, rest: list[str], path: str) -> Answer:
        """The operator page: its static files, and ``/ui/api/stats`` (every replica's totals)."""
        if rest == ["api", "stats"]:
            return _json(await self._live_stats())
        name = rest[0] if len(rest) == 1 else ("index.html" if not rest else "")
        asset = self._assets.get(name)
        if asset is None:
            raise ModelNotFoundError(f"no route {path[:200]!r}")
        body, content_type = asset
        return Answer(body, content_type=content_type, headers=[(b"cache-control", b"no-cache")])

    def _serve_proxy_health(self, route: str) -> Answer:
        """Ray Serve's proxy health routes, answered as its proxy answers them, because
        orchestrators built for Serve probe them on the HTTP port: KubeRay's worker readiness
        probe runs ``wget -T 2 -q -O- http://localhost:8000/-/healthz | grep success``. Healthy
        only while this replica is ready (every model has a ready version) and not draining."""
        if self.draining:
            return Answer(b"This node is being drained.", 503, TEXT)
        if not self.service.ready():
            return Answer(b"Not ready: a model has no ready version yet.", 503, TEXT)
        if route == "healthz":
            return Answer(b"success", content_type=TEXT)
        return _json({"/": self.service.server_name})  # route prefix -> application, as Serve lists them

    async def _live_stats(self) -> dict[str, Any]:
        snapshots = await self.live() if self.live is not None else [self.service.live_snapshot()]
        doc = live.summarize(snapshots)
        for error in doc["errors"]:
            kind = ErrorKind(error["kind"])
            error["http_status"] = int(http_status(kind))
            error["grpc_status"] = grpc_code(kind).name
        index = self.service.repository_index()
        doc["versions"] = [{"model": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in index]
        for row in doc["versions"]:
            if row["state"] == "READY":
                d = self.service.model_config(row["model"], row["version"])
                row.update(platform=d.platform, device=d.device, max_batch_size=d.max_batch_size)
        return doc

    async def _infer(
        self, scope: Scope, receive: Receive, headers: Headers, request_id: str, name: str, version: str
    ) -> Answer:
        with self.service.track(name, version, "http", request_id, headers.carrier) as tracker:
            header_length = _header_length(headers.header_length)
            body = await self._read_body(receive, headers)
            self.service.admit(name, version)
            core_request = rest_v2.to_core(body, header_length, name, version)
            core_request.header = _header_lookup(scope["headers"])
            response = await self.service.infer(core_request)
            encoded = rest_v2.from_core(response, core_request)
            tracker.served_version = response.model_version
        if encoded.header_length is None:
            return Answer(encoded.body)
        return Answer(
            encoded.body,
            content_type=OCTETS,
            headers=[(b"inference-header-content-length", str(encoded.header_length).encode())],
        )

    async def _repository_index(self, receive: Receive, headers: Headers) -> Answer:
        body = await self._read_body(receive, headers)
        ready_only = False
        if body.strip():
            ready_only = bool(rest_v2.json_object(body).get("ready", False))
        rows = self.service.repository_index(ready_only)
        return _json([{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows])


def _header_lookup(raw: list[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
    """One header's value by lowercase name (read only when a sticky traffic split asks)."""

    def lookup(name: str) -> str | None:
        key = name.encode("latin-1")
        for k, v in raw:
            if k == key:
                return v.decode("latin-1")
        return None

    return lookup


DISCARD_FACTOR = 4
"""An oversized body is read and dropped up to this many times the limit before the 413 (like a
lingering close); past that the connection closes under a client that is still sending."""


async def _discard(receive: Receive, limit: int) -> None:
    budget = DISCARD_FACTOR * limit
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise _MethodNotAllowed(method, allowed)


class _MethodNotAllowed(InvalidInputError):
    """405: the route exists for another method (answered by the router, not the status table)."""

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"method {method} not allowed here; use {allowed}")
        self.allowed = allowed


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_http_app(
    service: InferenceService,
    *,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    cors: CorsConfig | None = None,
    live: LiveSource | None = None,
    auth: Authenticator | None = None,
    admin: OperatorCommands | None = None,
) -> HttpApp:
    """The REST front end of ``service`` (and of ``admin``'s operator commands)."""
    return HttpApp(service, max_request_bytes=max_request_bytes, cors=cors, live=live, auth=auth, admin=admin)

"""HTTP/REST adapter: OIP V2 routes plus Triton's config, statistics and repository index, as
a bare ASGI application.

Why not FastAPI: its routing, dependency injection and response classes run on every
request; the V2 routes are a dozen fixed paths, so a ``split("/")`` router and two ASGI
messages per answer do the same work (bench/results/online.md has the measured rates).

This module routes; the messages (answers, the one error mapping, bodies within their limit) are
in ``http_messages``, the operator's routes in ``http_admin`` and the operator page and Serve's
health routes in ``http_operator``. One function maps every ``ServingError`` to an answer
(``http_messages.error_response``, codes from ``protocol.status``). Every answer carries ``X-Request-ID``: the client's, or one made here,
the same id the logs and an internal error's message carry.
"""

from __future__ import annotations

import asyncio
import logging

from serving.auth import AccessPolicy, Authenticator
from serving.config.server import MAX_REQUEST_BYTES, CorsConfig
from serving.control.admin import OperatorCommands
from serving.errors import ErrorKind, ModelNotFoundError, ServingError
from serving.protocol import feedback_json, openapi, rest_v2, triton
from serving.protocol.cors import CorsPolicy
from serving.protocol.http_admin import AdminRoutes
from serving.protocol.http_messages import (
    MAX_HEADER_BYTES,
    OCTETS,
    Answer,
    Headers,
    MethodNotAllowed,
    Receive,
    Scope,
    Send,
    error_response,
    expect,
    header_length,
    header_lookup,
    json_answer,
    read_body,
)
from serving.protocol.http_operator import LiveSource, OperatorPage, serve_proxy_health
from serving.protocol.status import REFUSAL_PACE_S
from serving.service.api import InferenceService
from serving.telemetry.requests import client_request_id

log = logging.getLogger(__name__)


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
        self.access = AccessPolicy(auth, protect_health, probe_token)
        self.max_request_bytes = max_request_bytes
        self.cors = CorsPolicy(cors) if cors is not None and cors.enabled else None
        self.draining = False
        self.in_flight = 0
        self.operator_page = OperatorPage(service, live)
        self._admin_routes = AdminRoutes(admin, self.access, max_request_bytes)

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
                    answer = json_answer({"error": f"request headers exceed {MAX_HEADER_BYTES} bytes"}, 431)
                elif scope["method"] == "OPTIONS":
                    answer = self._preflight(headers)
                else:
                    answer = await self._route(scope, receive, headers, request_id)
            except MethodNotAllowed as exc:
                answer = json_answer({"error": exc.message}, 405)
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

    def start_background(self) -> None:
        """Start what runs beside the requests (the operator page's history); on the serving loop."""
        self.operator_page.start_history()

    async def stop_background(self) -> None:
        await self.operator_page.stop_history()

    def _preflight(self, headers: Headers) -> Answer:
        """OPTIONS: a CORS preflight (204 for an allowed origin, 403 otherwise), or a plain
        OPTIONS without an origin (204 with ``Allow``)."""
        if headers.origin is None:
            return Answer(b"", 204, headers=[(b"allow", b"GET, POST, OPTIONS")])
        if self.cors is None or not self.cors.allows(headers.origin):
            return json_answer(
                {"error": f"origin {headers.origin[:200]!r} is not allowed (server setting cors.allow_origins)"}, 403
            )
        return Answer(b"", 204, headers=self.cors.preflight_headers(headers.origin))

    async def _route(self, scope: Scope, receive: Receive, headers: Headers, request_id: str) -> Answer:
        parts = scope["path"].rstrip("/").split("/")
        method = scope["method"]
        if len(parts) >= 2 and parts[0] == "" and parts[1] == "ui":
            expect(method, "GET")
            if parts[2:] == ["api", "stats"]:
                self._check(headers, all_models="the server's statistics")
            return await self.operator_page.answer(parts[2:], scope["path"], scope.get("query_string", b""))
        if len(parts) == 3 and parts[:2] == ["", "-"] and parts[2] in ("healthz", "routes"):
            expect(method, "GET")
            self._check_health(headers)
            return serve_proxy_health(self.service, self.draining, parts[2])
        if len(parts) < 2 or parts[0] != "" or parts[1] != "v2":
            raise ModelNotFoundError(f"no route {scope['path'][:200]!r}")
        rest = parts[2:]
        if rest == ["openapi.json"]:
            expect(method, "GET")
            return Answer(openapi.document_bytes())
        if rest and rest[0] == "models" and len(rest) >= 2:
            name = rest[1]
            tail = rest[2:]
            version = ""
            if len(tail) >= 2 and tail[0] == "versions":
                version, tail = tail[1], tail[2:]
            if name == "stats" and not tail and not version:
                expect(method, "GET")
                self._check(headers, all_models="the statistics of every model")
                return json_answer(triton.stats_json(self.service.statistics()))
            self._check(headers, model=name)
            action = tail[0] if len(tail) == 1 else ("" if not tail else None)
            if action == "infer":
                expect(method, "POST")
                return await self._infer(scope, receive, headers, request_id, name, version)
            if action == "feedback" and not version:
                expect(method, "POST")
                labels = feedback_json.labels_from_json(await read_body(receive, headers, self.max_request_bytes))
                return json_answer(feedback_json.result_json(await self.service.feedback(name, labels)))
            if action == "":
                expect(method, "GET")
                return json_answer(rest_v2.metadata_json(self.service.model_metadata(name, version)))
            if action == "ready":
                expect(method, "GET")
                ok = self.service.model_ready(name, version)
                return json_answer({"name": name, "ready": ok}, 200 if ok else 503)
            if action == "config":
                expect(method, "GET")
                return json_answer(triton.config_json(self.service.model_config(name, version)))
            if action == "stats":
                expect(method, "GET")
                return json_answer(triton.stats_json(self.service.statistics(name, version)))
        elif not rest:
            expect(method, "GET")
            self._check(headers)
            return json_answer(self.service.server_metadata())
        elif rest == ["health", "live"]:
            expect(method, "GET")
            self._check_health(headers)
            return json_answer({"live": self.service.live()})
        elif rest == ["health", "ready"]:
            expect(method, "GET")
            self._check_health(headers)
            ok = self.service.ready() and not self.draining
            return json_answer({"ready": ok}, 200 if ok else 503)
        elif rest == ["repository", "index"]:
            expect(method, "POST")
            self._check(headers, all_models="the repository index")
            return await self._repository_index(receive, headers)
        elif len(rest) == 4 and rest[:2] == ["repository", "models"] and rest[3] in ("load", "unload"):
            expect(method, "POST")
            return await self._admin_routes.repository(rest[3], rest[2], scope, receive, headers)
        elif rest and rest[0] == "admin":
            return await self._admin_routes.route(rest[1:], method, scope, receive, headers)
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

    async def _infer(
        self, scope: Scope, receive: Receive, headers: Headers, request_id: str, name: str, version: str
    ) -> Answer:
        with self.service.track(name, version, "http", request_id, headers.carrier) as tracker:
            declared_header = header_length(headers.header_length)
            body = await read_body(receive, headers, self.max_request_bytes)
            self.service.admit(name, version)
            core_request = rest_v2.to_core(body, declared_header, name, version)
            core_request.header = header_lookup(scope["headers"])
            core_request.request_id = request_id
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
        body = await read_body(receive, headers, self.max_request_bytes)
        ready_only = False
        if body.strip():
            ready_only = bool(rest_v2.json_object(body).get("ready", False))
        rows = self.service.repository_index(ready_only)
        return json_answer([{"name": r.name, "version": r.version, "state": r.state, "reason": r.reason} for r in rows])


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

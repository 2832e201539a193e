"""The replica's own servers: V2 gRPC (grpc.aio) and V2 HTTP (uvicorn + httptools running
:class:`~serving.protocol.http.HttpApp`) on the server's ports, shared by every replica on a
node through SO_REUSEPORT (the kernel spreads connections), plus a private loopback port
each, so a health probe reaches this replica and no other.

Stopping drains: the shared listeners close first (new connections go to the replicas that
stay), gRPC clients get GOAWAY and reconnect, HTTP answers carry ``Connection: close``
until the in-flight requests are done and the connections go quiet, then whatever is left
is closed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import grpc
import uvicorn

from serving.auth import Authenticator
from serving.config.server import CorsConfig, ServerConfig, TlsConfig
from serving.control.admin import OperatorCommands
from serving.protocol.bounded_http import BoundedHttpToolsProtocol
from serving.protocol.grpc_frontends import GRPC_MAX_CONCURRENT_STREAMS, FrontEndKind, GrpcPort, front_end
from serving.protocol.grpc_v2 import SERVICE_NAME, GrpcAdapter
from serving.protocol.http import HttpApp
from serving.protocol.http_operator import LiveSource
from serving.service.api import InferenceService
from serving.service.local import LocalInferenceService

log = logging.getLogger(__name__)

QUIET_S = 0.5
"""A draining server closes once no request has started for this long and none is running (HTTP),
or no gRPC handler has run for this long (what grpc still holds is then cut)."""
PROBE_TIMEOUT_S = 5.0
BACKLOG = 2048


GIL_SWITCH_INTERVAL_S = 0.0005
"""The event loop (I/O, refusals) and the model's worker thread share the GIL: a thread waiting
for it gets it after at most this long (CPython's default, 5 ms, starved the model under a
refusal storm: bench/results/overload.md). Set by every serving process (``sys.setswitchinterval``)."""


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (SO_REUSEPORT when asked).

    Raises:
        OSError: the address cannot be bound (held by a process of another user, or not
            with SO_REUSEPORT).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def uvicorn_tls(tls: TlsConfig | None) -> dict[str, Any]:
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if tls.client_ca is not None:
        options.update(ssl_ca_certs=str(tls.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def _grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Uvicorn(uvicorn.Server):
    """uvicorn driven by the replica: no signal handlers of its own, no tick loop."""

    async def begin(self, sockets: list[socket.socket]) -> None:
        config = self.config
        if not config.loaded:
            config.load()
        self.lifespan = config.lifespan_class(config)
        await self.startup(sockets=sockets)


@dataclass
class ServerAddresses:
    http_port: int
    grpc_port: int
    private_http_port: int
    private_grpc_port: int


class ReplicaServers:
    """Owns one replica's gRPC and HTTP servers; :meth:`start`, :meth:`probe`, :meth:`stop`."""

    def __init__(
        self,
        service: InferenceService,
        *,
        host: str,
        http_port: int,
        grpc_port: int,
        max_request_bytes: int,
        drain_seconds: float,
        cors: CorsConfig | None = None,
        live: LiveSource | None = None,
        auth: Authenticator | None = None,
        tls: TlsConfig | None = None,
        grpc_max_concurrent_streams: int = GRPC_MAX_CONCURRENT_STREAMS,
        protect_health: bool = False,
        admin: OperatorCommands | None = None,
        grpc_frontend: FrontEndKind = "auto",
    ) -> None:
        self.service = service
        # Health with keys on: this replica's probes show a random token only it knows.
        self._probe_token = secrets.token_urlsafe(24)
        self.tls = tls
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.drain_seconds = drain_seconds
        self.http_app = HttpApp(
            service,
            max_request_bytes=max_request_bytes,
            cors=cors,
            live=live,
            auth=auth,
            protect_health=protect_health,
            probe_token=self._probe_token,
            admin=admin,
        )
        self._grpc_adapter = GrpcAdapter(service, auth, protect_health, self._probe_token, admin)
        self._grpc = front_end(grpc_frontend, self._grpc_adapter, max_request_bytes, grpc_max_concurrent_streams)
        self._uvicorn: _Uvicorn | None = None
        self._private_uvicorn: _Uvicorn | None = None
        self._sockets: list[socket.socket] = []
        self._probe_channel: grpc.aio.Channel | None = None
        self._stopped: asyncio.Task[None] | None = None
        self.addresses: ServerAddresses | None = None

    async def start(self) -> ServerAddresses:
        """Bind and serve. Call once the models are loaded and warm: a replica that listens is ready.

        Raises:
            OSError: a port cannot be bound.
        """
        shared = listening_socket(self.host, self.http_port, reuse_port=True)
        self._sockets = [shared]  # closed by stop(), even when the next bind fails
        private = listening_socket("127.0.0.1", 0, reuse_port=False)
        self._sockets.append(private)
        options: dict[str, Any] = dict(
            http=BoundedHttpToolsProtocol,
            lifespan="off",
            access_log=False,
            log_level="warning",
            server_header=False,
            date_header=False,
            timeout_graceful_shutdown=max(1, math.ceil(self.drain_seconds)),
            backlog=BACKLOG,
        )
        self._uvicorn = _Uvicorn(uvicorn.Config(self.http_app, **options, **uvicorn_tls(self.tls)))
        self._private_uvicorn = _Uvicorn(uvicorn.Config(self.http_app, **options))
        # The private ports (this replica's own health probes, 127.0.0.1) stay plain text.
        try:
            grpc_port, private_grpc = await self._grpc.start(
                [GrpcPort(_grpc_address(self.host, self.grpc_port), self.tls), GrpcPort("127.0.0.1:0")]
            )
        except OSError as exc:
            raise OSError(f"cannot bind gRPC port {self.grpc_port} on {self.host}: {exc}") from None
        await self._uvicorn.begin([shared])
        await self._private_uvicorn.begin([private])
        self.addresses = ServerAddresses(
            http_port=shared.getsockname()[1],
            grpc_port=grpc_port,
            private_http_port=private.getsockname()[1],
            private_grpc_port=private_grpc,
        )
        self._probe_channel = grpc.aio.insecure_channel(f"127.0.0.1:{private_grpc}")
        self.http_app.start_background()
        return self.addresses

    async def probe(self) -> None:
        """Ask this replica's own servers (over their private ports) whether they are live.

        Raises:
            RuntimeError: a server did not answer as live within PROBE_TIMEOUT_S.
        """
        if self.addresses is None or self._probe_channel is None:
            raise RuntimeError("servers not started")
        await asyncio.wait_for(self._probe_http(self.addresses.private_http_port), PROBE_TIMEOUT_S)
        live = self._probe_channel.unary_unary(f"/{SERVICE_NAME}/ServerLive")
        # ServerLiveRequest is empty; ServerLiveResponse {bool live = 1} is b"\x08\x01" when live.
        answer = await live(b"", timeout=PROBE_TIMEOUT_S, metadata=(("authorization", f"Bearer {self._probe_token}"),))
        if answer != b"\x08\x01":
            raise RuntimeError(f"gRPC ServerLive answered {answer!r}")

    async def _probe_http(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"GET /v2/health/live HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n"
                + f"Authorization: Bearer {self._probe_token}\r\n\r\n".encode()
            )
            status = await reader.readline()
        finally:
            writer.close()
        if not status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"HTTP /v2/health/live answered {status[:64]!r}")

    def stop(self) -> asyncio.Task[None]:
        """Drain and stop both servers (at most once; later calls get the same task)."""
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_task(self._stop())
        return self._stopped

    async def _stop(self) -> None:
        began = time.monotonic()
        self.http_app.draining = True
        grpc_done = asyncio.ensure_future(self._stop_grpc())
        try:
            if self._uvicorn is not None and self._uvicorn.started:
                for server in self._uvicorn.servers:
                    server.close()  # stop accepting; open connections keep being served
                await self._drain_http(began + self.drain_seconds)
                await self._uvicorn.shutdown()
            if self._private_uvicorn is not None and self._private_uvicorn.started:
                await self._private_uvicorn.shutdown()
        finally:
            await grpc_done
            await self.http_app.stop_background()
            for sock in self._sockets:
                sock.close()
            if self._probe_channel is not None:
                await self._probe_channel.close()
        log.info("servers stopped after %.2fs of draining", time.monotonic() - began)

    async def _stop_grpc(self) -> None:
        """grpc's stop refuses new calls at once and waits up to ``drain_seconds`` for the calls it
        holds, those none of our handlers will run included (a unary call whose request message
        has not arrived: a stalled client, or one caught by the shutdown). Once no handler of ours
        has run for QUIET_S, what grpc still holds is cut, as the HTTP side's drain ends."""
        stopping = asyncio.ensure_future(self._grpc.stop(self.drain_seconds))
        try:
            quiet_since: float | None = None
            while not stopping.done():
                if self._grpc_adapter.in_flight:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= QUIET_S:
                    await self._grpc.stop(None)
                    break
                await asyncio.wait({stopping}, timeout=0.05)
            await stopping
        finally:
            if not stopping.done():  # this stop was cancelled: so is grpc's wait
                stopping.cancel()

    async def _drain_http(self, deadline: float) -> None:
        """Serve the open connections (each answer closing its connection) until none is left,
        or none has started a request for QUIET_S and none is running, or the deadline."""
        assert self._uvicorn is not None
        state = self._uvicorn.server_state
        seen, quiet_since = state.total_requests, time.monotonic()
        while state.connections and time.monotonic() < deadline:
            now = time.monotonic()
            if state.total_requests != seen:
                seen, quiet_since = state.total_requests, now
            elif self.http_app.in_flight == 0 and now - quiet_since >= QUIET_S:
                return
            await asyncio.sleep(0.05)


def servers_for(service: LocalInferenceService, config: ServerConfig, live: LiveSource | None) -> ReplicaServers:
    """The servers ``config`` asks for, in front of ``service`` and its operator commands."""
    return ReplicaServers(
        service,
        host=config.host,
        http_port=config.http_port,
        grpc_port=config.grpc_port,
        max_request_bytes=config.max_request_bytes,
        drain_seconds=config.drain_seconds,
        cors=config.cors,
        live=live,
        auth=Authenticator(config.api_keys) if config.api_keys is not None else None,
        tls=config.tls,
        grpc_max_concurrent_streams=config.grpc_max_concurrent_streams,
        protect_health=config.protect_health,
        admin=service.admin,
        grpc_frontend=config.grpc_frontend,
    )


def describe(addresses: ServerAddresses, host: str) -> dict[str, Any]:
    return {
        "http": f"{host}:{addresses.http_port}",
        "grpc": f"{host}:{addresses.grpc_port}",
        "private_http": f"127.0.0.1:{addresses.private_http_port}",
        "private_grpc": f"127.0.0.1:{addresses.private_grpc_port}",
    }

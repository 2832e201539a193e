"""The two gRPC front ends a replica can serve V2 gRPC with; both dispatch the same
:func:`~serving.protocol.grpc_v2.rpc_methods` to the same :class:`GrpcAdapter`.

- :class:`CompiledFrontEnd` (``_frontend``, a C++ extension on grpc++'s callback server): grpc++
  reads every call on its own threads and queues it; the event loop is woken through an eventfd
  and takes every queued call at once, one GIL acquisition for many requests. Built by
  ``make`` (``setup.py``) where grpc++'s headers are (Debian's ``libgrpc++-dev``).
- :class:`AioFrontEnd` (grpc.aio): one coroutine per call; the fallback where the extension is
  not built, and ``grpc_frontend: aio``.

Both take their ports at :meth:`start` (the first one shared through SO_REUSEPORT, the others
this replica's own), and stop in two steps: :meth:`stop` with a grace (new calls refused, the
open ones finish), then :meth:`stop` with ``None`` (what is still open is cancelled).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import grpc

from serving.config.server import TlsConfig
from serving.protocol.grpc_v2 import GrpcAdapter, Method, rpc_methods
from serving.protocol.http_messages import MAX_HEADER_BYTES

log = logging.getLogger(__name__)

FrontEndKind = Literal["auto", "compiled", "aio"]
GRPC_MAX_CONCURRENT_STREAMS = 256


@dataclass(frozen=True)
class GrpcPort:
    address: str
    tls: TlsConfig | None = None


class GrpcFrontEnd(Protocol):
    name: str

    async def start(self, ports: list[GrpcPort]) -> list[int]:
        """Bind ``ports`` and serve; the ports bound (a port 0 chosen by the kernel).

        Raises:
            OSError: a port cannot be bound.
        """

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls; wait up to ``grace`` for the open ones (None: cancel them now)."""


def compiled_available() -> str | None:
    """None when the compiled front end imports, else why not."""
    try:
        importlib.import_module("serving.protocol._frontend")
    except ImportError as exc:
        return str(exc)
    return None


def _compiled(kind: FrontEndKind) -> tuple[bool, str]:
    """Whether ``kind`` serves with the compiled front end here, and why not when it does not.

    Raises:
        RuntimeError: ``compiled`` asked for where the extension is not built.
    """
    if kind == "aio":
        return False, "grpc_frontend: aio"
    missing = compiled_available()
    if missing is None:
        return True, ""
    if kind == "compiled":
        raise RuntimeError(f"grpc_frontend: compiled, but the extension is not built ({missing}): run `make`")
    return False, f"the compiled front end is not built: {missing}"


def chosen(kind: FrontEndKind) -> str:
    """Which front end ``kind`` serves with here, in words (the startup banner's line).

    Raises:
        RuntimeError: ``compiled`` asked for where the extension is not built.
    """
    compiled, why_not = _compiled(kind)
    if compiled:
        return f"compiled (grpc++ {importlib.import_module('serving.protocol._frontend').GRPC_VERSION})"
    return f"grpc.aio ({why_not})"


def front_end(
    kind: FrontEndKind, adapter: GrpcAdapter, max_message_bytes: int, max_concurrent_streams: int
) -> GrpcFrontEnd:
    """The front end ``kind`` names; ``auto`` is the compiled one where it is built.

    Raises:
        RuntimeError: ``compiled`` asked for where the extension is not built.
    """
    compiled, why_not = _compiled(kind)
    if compiled:
        return CompiledFrontEnd(adapter, max_message_bytes, max_concurrent_streams)
    if kind == "auto":
        log.info("serving gRPC with grpc.aio (%s)", why_not)
    return AioFrontEnd(adapter, max_message_bytes, max_concurrent_streams)


def grpc_server_options(
    max_message_bytes: int, max_concurrent_streams: int = GRPC_MAX_CONCURRENT_STREAMS
) -> list[tuple[str, int]]:
    """grpcio honours ``grpc.so_reuseport`` only as an integer (the string "0" is ignored).
    ``max_concurrent_streams`` bounds the calls one connection may have open at once; metadata
    is bounded like HTTP headers."""
    return [
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", max_concurrent_streams),
        ("grpc.max_metadata_size", MAX_HEADER_BYTES),  # the HTTP headers' limit
    ]


def grpc_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """Server credentials; with a client CA, clients must present a certificate it signed."""
    client_ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class AioFrontEnd:
    """grpc.aio: one coroutine per call."""

    name = "aio"

    def __init__(self, adapter: GrpcAdapter, max_message_bytes: int, max_concurrent_streams: int) -> None:
        self._server = grpc.aio.server(options=grpc_server_options(max_message_bytes, max_concurrent_streams))
        for service, methods in _by_service(rpc_methods(adapter)).items():
            handlers = {
                name: grpc.unary_unary_rpc_method_handler(
                    m.handler, request_deserializer=m.deserialize, response_serializer=m.serialize
                )
                for name, m in methods.items()
            }
            self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))

    async def start(self, ports: list[GrpcPort]) -> list[int]:
        bound = []
        for port in ports:
            if port.tls is None:
                number = self._server.add_insecure_port(port.address)
            else:
                number = self._server.add_secure_port(port.address, grpc_credentials(port.tls))
            if number == 0:
                raise OSError(f"cannot bind gRPC port {port.address}")
            bound.append(number)
        await self._server.start()
        return bound

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)


def _by_service(methods: dict[str, Method]) -> dict[str, dict[str, Method]]:
    out: dict[str, dict[str, Method]] = {}
    for path, method in methods.items():
        service, name = path.lstrip("/").split("/", 1)
        out.setdefault(service, {})[name] = method
    return out


class CallContext:
    """What a handler asks of its call (the subset of ``grpc.aio.ServicerContext`` the
    adapter uses), for a call of the compiled front end."""

    __slots__ = ("_deadline", "_metadata", "_peer", "code", "details", "trailing")

    def __init__(self, metadata: list[tuple[str, str | bytes]], deadline: float | None, peer: str) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._peer = peer
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.trailing: list[tuple[str, str]] = []

    def invocation_metadata(self) -> list[tuple[str, str | bytes]]:
        return self._metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = [(str(k), str(v)) for k, v in metadata]


class CompiledFrontEnd:
    """grpc++ reads and queues the calls; the event loop takes them in batches (module docstring)."""

    name = "compiled"

    def __init__(self, adapter: GrpcAdapter, max_message_bytes: int, max_concurrent_streams: int) -> None:
        frontend = importlib.import_module("serving.protocol._frontend")
        self._native = frontend.Frontend(max_message_bytes, max_concurrent_streams, MAX_HEADER_BYTES)
        self._methods = rpc_methods(adapter)
        self._tasks: dict[int, asyncio.Task[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Future[None] | None = None

    async def start(self, ports: list[GrpcPort]) -> list[int]:
        native = [
            (
                port.address,
                *(("", "", "") if port.tls is None else _pem(port.tls)),
            )
            for port in ports
        ]
        try:
            bound: list[int] = await asyncio.to_thread(self._native.start, native)
        except RuntimeError as exc:
            raise OSError(f"cannot bind gRPC ports {[p.address for p in ports]}: {exc}") from None
        if 0 in bound:
            self._native.begin_shutdown(0.0)
            await asyncio.to_thread(self._native.wait_shutdown)
            raise OSError(f"cannot bind gRPC port {ports[bound.index(0)].address}")
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._native.fileno(), self._take)
        return bound

    def _take(self) -> None:
        """Start a task for every call that arrived, and cancel those whose client went away."""
        calls, cancelled = self._native.take()
        now = time.monotonic()
        assert self._loop is not None
        for call, path, payload, metadata, remaining, peer in calls:
            method = self._methods.get(path)
            if method is None:
                self._native.finish(call, grpc.StatusCode.UNIMPLEMENTED.value[0], f"unknown method {path}", None, [])
                continue
            context = CallContext(metadata, None if remaining is None else now + remaining, peer)
            try:
                task: asyncio.Task[Any] = self._loop.create_task(method.handler(method.deserialize(payload), context))
            except Exception as exc:  # every call taken is answered, even when it cannot start
                log.error("gRPC call %s could not start", path, exc_info=exc)
                self._native.finish(call, grpc.StatusCode.INTERNAL.value[0], "the call could not start", None, [])
                continue
            self._tasks[call] = task
            task.add_done_callback(functools.partial(self._finish, call, context, method))
        for call in cancelled:
            held = self._tasks.get(call)
            if held is not None:
                held.cancel()

    def _finish(self, call: int, context: CallContext, method: Method, task: asyncio.Task[Any]) -> None:
        """Every call taken is finished here, once, whatever its task's end."""
        del self._tasks[call]
        code, details, answer = grpc.StatusCode.CANCELLED, "cancelled", None
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:  # the adapter answers every Exception itself: this is a bug
                log.error("gRPC handler %s raised", method.handler.__name__, exc_info=exc)
                code, details = grpc.StatusCode.INTERNAL, "unhandled error in gRPC call"
            else:
                code, details = context.code, context.details
                if code is grpc.StatusCode.OK:
                    try:
                        answer = method.serialize(task.result())
                    except Exception as exc:
                        log.error("cannot serialize the answer of %s", method.handler.__name__, exc_info=exc)
                        code, details = grpc.StatusCode.INTERNAL, "cannot serialize the answer"
        self._native.finish(call, code.value[0], details, answer, context.trailing)

    async def stop(self, grace: float | None) -> None:
        if self._loop is None:
            return
        if self._shutdown is None:
            self._native.begin_shutdown(grace or 0.0)  # GOAWAY now, ahead of any answer written after
            self._shutdown = asyncio.ensure_future(asyncio.to_thread(self._native.wait_shutdown))
            self._shutdown.add_done_callback(self._stopped)
        if grace is None:
            self._native.cancel_all()
        await asyncio.shield(self._shutdown)

    def _stopped(self, _: asyncio.Future[None]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._native.fileno())


def _pem(tls: TlsConfig) -> tuple[str, str, str]:
    client_ca = tls.client_ca.read_text() if tls.client_ca is not None else ""
    return tls.key.read_text(), tls.cert.read_text(), client_ca

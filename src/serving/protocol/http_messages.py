"""The HTTP side's messages, apart from any route: ASGI types, an answer and the one mapping from a
core error to one, the request headers the routes read, a body read within its limit, and 405s."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.errors import ErrorKind, InvalidInputError, PayloadTooLargeError, ServingError
from serving.protocol.status import RETRY_AFTER_S, http_status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

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


def json_answer(doc: Any, status: int = 200) -> Answer:
    return Answer(json.dumps(doc, separators=(",", ":")).encode(), status)


def error_response(exc: ServingError, request_id: str) -> Answer:
    """The one mapping from a core error to an HTTP answer."""
    status = int(http_status(exc.kind))
    message = exc.message
    if exc.kind is ErrorKind.INTERNAL:
        message = f"internal error (request id {request_id})" + (f": {exc.message}" if exc.shown else "")
    answer = json_answer({"error": message}, status)
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


def header_length(raw: bytes | None) -> int | None:
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


def header_lookup(raw: list[tuple[bytes, bytes]]) -> Callable[[str], str | None]:
    """One header's value by lowercase name (read only when a sticky traffic split asks)."""

    def lookup(name: str) -> str | None:
        key = name.encode("latin-1")
        for k, v in raw:
            if k == key:
                return v.decode("latin-1")
        return None

    return lookup


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The whole body, at most ``max_request_bytes``.

    Raises:
        PayloadTooLargeError: the body is larger (after reading the rest of it, so that the
            client, still sending, reads the 413 instead of a broken connection).
        InvalidInputError: the client went away mid-body.
    """
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


def expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(method, allowed)


class MethodNotAllowed(InvalidInputError):
    """405: the route exists for another method (answered by the router, not the status table)."""

    def __init__(self, method: str, allowed: str) -> None:
        super().__init__(f"method {method} not allowed here; use {allowed}")
        self.allowed = allowed

"""The one table from ``ErrorKind`` to HTTP status and gRPC status code."""

from __future__ import annotations

from http import HTTPStatus

import grpc

from serving.errors import ErrorKind

STATUS: dict[ErrorKind, tuple[HTTPStatus, grpc.StatusCode]] = {
    ErrorKind.INVALID_INPUT: (HTTPStatus.BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
    ErrorKind.TOO_LARGE: (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ErrorKind.NOT_FOUND: (HTTPStatus.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
    ErrorKind.UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.OVERLOADED: (HTTPStatus.SERVICE_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
    ErrorKind.DEADLINE_EXCEEDED: (HTTPStatus.GATEWAY_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
    ErrorKind.UNIMPLEMENTED: (HTTPStatus.NOT_IMPLEMENTED, grpc.StatusCode.UNIMPLEMENTED),
    ErrorKind.UNAUTHENTICATED: (HTTPStatus.UNAUTHORIZED, grpc.StatusCode.UNAUTHENTICATED),
    ErrorKind.PERMISSION_DENIED: (HTTPStatus.FORBIDDEN, grpc.StatusCode.PERMISSION_DENIED),
    ErrorKind.CONFLICT: (HTTPStatus.CONFLICT, grpc.StatusCode.FAILED_PRECONDITION),
    ErrorKind.INTERNAL: (HTTPStatus.INTERNAL_SERVER_ERROR, grpc.StatusCode.INTERNAL),
}

RETRY_AFTER_S = 1
"""Sent as ``Retry-After`` with OVERLOADED answers."""
REFUSAL_PACE_S = 0.02
"""An OVERLOADED answer is sent after this pause: clients that retry at once (closed loops that
ignore Retry-After) then cannot drive the refusal rate up until the event loop takes the CPU the
model needs (measured: bench/results/overload.md). Well inside the 50 ms a refusal may take."""


def http_status(kind: ErrorKind) -> HTTPStatus:
    return STATUS[kind][0]


def grpc_code(kind: ErrorKind) -> grpc.StatusCode:
    return STATUS[kind][1]

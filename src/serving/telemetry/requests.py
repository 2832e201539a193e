"""Per-request accounting shared by the HTTP and gRPC adapters: count, latency, in-flight."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from serving.errors import ErrorKind, ServingError
from serving.telemetry import tracing
from serving.telemetry.live import RecentErrors
from serving.telemetry.logs import request_id_var
from serving.telemetry.metrics import IN_FLIGHT, REJECTED, REQUEST_SECONDS, REQUESTS, Metrics

LabelResolver = Callable[[str, str], tuple[str, str]]

log = logging.getLogger(__name__)


MAX_REQUEST_ID = 128
CANCELLED = "cancelled"
"""The ``outcome`` of a request whose call was cancelled before it was answered."""


def new_request_id() -> str:
    """A request id for a request that came without one (16 hex digits)."""
    return os.urandom(8).hex()


def client_request_id(given: str | None) -> str:
    """The client's request id when it is a sane one, else a new one: at most ``MAX_REQUEST_ID``
    visible ASCII characters (letters, digits and punctuation; no spaces, controls or non-ASCII),
    so it can be echoed in a header and written to logs and traces as it came."""
    if given and len(given) <= MAX_REQUEST_ID and given.isascii() and given.isprintable() and " " not in given:
        return given
    return new_request_id()


class InFlight:
    """Requests being served in this process, per (model, protocol) label pair, and in all;
    and the last requests that failed (``errors``, for the operator page)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.counts: dict[tuple[str, str], int] = {}
        self.total = 0
        self.errors = RecentErrors()

    def add(self, model: str, protocol: str, delta: int) -> None:
        key = (model, protocol)
        n = self.counts[key] = self.counts.get(key, 0) + delta
        self.total += delta
        self.metrics.set(IN_FLIGHT, {"model": model, "protocol": protocol}, n)


class RequestTracker:
    """``with tracker:`` around one inference request; the outcome is read off the exception.

    ``labels(name, version)`` turns what the client asked for into bounded label values.
    Set ``served_version`` once the service has answered.
    """

    __slots__ = (
        "_in_flight",
        "_labels",
        "_model",
        "_request_token",
        "_span",
        "_start",
        "carrier",
        "metrics",
        "name",
        "protocol",
        "request_id",
        "served_version",
        "version",
    )

    def __init__(
        self,
        metrics: Metrics,
        in_flight: InFlight,
        labels: LabelResolver,
        name: str,
        version: str,
        protocol: str,
        request_id: str,
        carrier: Mapping[str, str] | None = None,
    ) -> None:
        self.metrics = metrics
        self.request_id = request_id
        self.carrier = carrier or {}
        self._span: tracing.RequestSpan | None = None
        self._in_flight = in_flight
        self._labels = labels
        self.name, self.version, self.protocol = name, version, protocol
        self.served_version = ""
        self._model = ""
        self._start = 0.0

    def __enter__(self) -> RequestTracker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exc)

    def start(self) -> None:
        self._start = time.perf_counter()
        self._model, version = self._labels(self.name, self.version)
        self._in_flight.add(self._model, self.protocol, 1)
        self._request_token = request_id_var.set(self.request_id)
        if tracing.enabled():
            self._span = tracing.RequestSpan(self.carrier, self.protocol, self._model, version)

    def finish(self, exc: BaseException | None) -> None:
        """Record the request; ``exc`` is what it failed with (None: it succeeded)."""
        seconds = time.perf_counter() - self._start
        self._in_flight.add(self._model, self.protocol, -1)
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, asyncio.CancelledError):
            outcome = CANCELLED  # the client went away or its deadline passed mid-call: no answer was sent
        elif isinstance(exc, ServingError):
            outcome = exc.kind.value
        else:
            outcome = ErrorKind.INTERNAL.value
        model, version = (
            (self._model, self.served_version) if self.served_version else self._labels(self.name, self.version)
        )
        labels = {"model": model, "version": version, "protocol": self.protocol}
        self.metrics.observe(REQUEST_SECONDS, labels, seconds)
        self.metrics.inc(REQUESTS, {**labels, "outcome": outcome})
        if outcome == ErrorKind.OVERLOADED.value:
            self.metrics.inc(REJECTED, labels)
        if exc is not None and outcome != CANCELLED:
            message = (
                exc.message
                if isinstance(exc, ServingError) and outcome != ErrorKind.INTERNAL.value
                else "internal error"
            )
            self._in_flight.errors.add(model, version, self.protocol, outcome, message, self.request_id)
        if outcome == ErrorKind.INTERNAL.value:
            log.error("%s request %s to %s v%s failed: %s", self.protocol, self.request_id, model, version, exc)
        if self._span is not None:
            self._span.end(outcome, version)
        request_id_var.reset(self._request_token)

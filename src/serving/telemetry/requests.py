"""Per-request accounting shared by the HTTP and gRPC adapters: count, latency, in-flight."""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

from serving.errors import ErrorKind, ServingError
from serving.telemetry.metrics import IN_FLIGHT, REJECTED, REQUEST_SECONDS, REQUESTS, Metrics

LabelResolver = Callable[[str, str], tuple[str, str]]


class InFlight:
    """Requests being served in this process, per (model, protocol) label pair."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, model: str, protocol: str, delta: int) -> None:
        key = (model, protocol)
        n = self.counts[key] = self.counts.get(key, 0) + delta
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
        "_start",
        "metrics",
        "name",
        "protocol",
        "served_version",
        "version",
    )

    def __init__(
        self, metrics: Metrics, in_flight: InFlight, labels: LabelResolver, name: str, version: str, protocol: str
    ) -> None:
        self.metrics = metrics
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
        self._model, _ = self._labels(self.name, self.version)
        self._in_flight.add(self._model, self.protocol, 1)

    def finish(self, exc: BaseException | None) -> None:
        """Record the request; ``exc`` is what it failed with (None: it succeeded)."""
        seconds = time.perf_counter() - self._start
        self._in_flight.add(self._model, self.protocol, -1)
        if exc is None:
            outcome = "ok"
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

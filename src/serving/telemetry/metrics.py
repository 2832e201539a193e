"""What the server measures: every metric's name, kind, labels and buckets in one table.

Core code records through the small :class:`Metrics` interface and never imports an
exporter. ``serving.deploy.ray_metrics`` exports through Ray's per-node metrics agent
(one scrape per node sums every replica process on it); tests use :class:`NullMetrics`.

Labels are bounded: model and version are names the repository serves (anything else is
``_unknown``), protocol is ``http`` or ``grpc``, outcome is ``ok`` or an ``ErrorKind``
value. No request ids or free text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN = "_unknown"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "histogram", "gauge"]
    description: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


REQUESTS = MetricSpec(
    "serving_requests",
    "counter",
    "Inference requests answered, by outcome (ok or the error kind).",
    ("model", "version", "protocol", "outcome"),
)
REQUEST_SECONDS = MetricSpec(
    "serving_request_duration_seconds",
    "histogram",
    "End-to-end inference request latency inside the replica, seconds.",
    ("model", "version", "protocol"),
    LATENCY_BUCKETS,
)
QUEUE_SECONDS = MetricSpec(
    "serving_queue_wait_seconds",
    "histogram",
    "Time a request waited in its model version's batch queue, seconds.",
    ("model", "version"),
    LATENCY_BUCKETS,
)
COMPUTE_SECONDS = MetricSpec(
    "serving_compute_seconds",
    "histogram",
    "Model execution time of one batch, seconds.",
    ("model", "version"),
    LATENCY_BUCKETS,
)
BATCH_SIZE = MetricSpec(
    "serving_batch_size",
    "histogram",
    "Rows per model execution.",
    ("model", "version"),
    tuple(float(b) for b in BATCH_BUCKETS),
)
IN_FLIGHT = MetricSpec(
    "serving_inflight_requests",
    "gauge",
    "Inference requests being served now, per replica.",
    ("model", "protocol"),
)
QUEUE_DEPTH = MetricSpec(
    "serving_queue_depth",
    "gauge",
    "Requests waiting in the batch queue, per replica.",
    ("model", "version"),
)
QUEUE_CAPACITY = MetricSpec(
    "serving_queue_capacity",
    "gauge",
    "The batch queue's limit (dynamic_batching.max_queue_size), per replica.",
    ("model", "version"),
)
LOAD_SECONDS = MetricSpec(
    "serving_model_load_seconds",
    "gauge",
    "How long the version took to load and warm up, seconds.",
    ("model", "version"),
)
READY = MetricSpec(
    "serving_model_ready",
    "gauge",
    "1 when the model version is ready to serve, 0 otherwise, per replica.",
    ("model", "version"),
)
REJECTED = MetricSpec(
    "serving_rejected_requests",
    "counter",
    "Requests refused because the batch queue was full (overload).",
    ("model", "version", "protocol"),
)
SPECS = (
    REQUESTS,
    REQUEST_SECONDS,
    QUEUE_SECONDS,
    COMPUTE_SECONDS,
    BATCH_SIZE,
    IN_FLIGHT,
    QUEUE_DEPTH,
    QUEUE_CAPACITY,
    LOAD_SECONDS,
    READY,
    REJECTED,
)


class Metrics(Protocol):
    """Where the server's measurements go."""

    def inc(self, spec: MetricSpec, labels: dict[str, str], value: float = 1.0) -> None: ...
    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None: ...
    def set(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None: ...


class NullMetrics:
    """Records nothing."""

    def inc(self, spec: MetricSpec, labels: dict[str, str], value: float = 1.0) -> None:
        pass

    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        pass

    def set(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        pass


class MemoryMetrics:
    """Keeps everything in dicts (tests and in-process use): counters and gauges by label
    values, histograms as lists of observations."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[str, ...]], float] = {}
        self.observations: dict[tuple[str, tuple[str, ...]], list[float]] = {}

    @staticmethod
    def _key(spec: MetricSpec, labels: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        return spec.name, tuple(labels[k] for k in spec.labels)

    def inc(self, spec: MetricSpec, labels: dict[str, str], value: float = 1.0) -> None:
        key = self._key(spec, labels)
        self.values[key] = self.values.get(key, 0.0) + value

    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        self.observations.setdefault(self._key(spec, labels), []).append(value)

    def set(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        self.values[self._key(spec, labels)] = value

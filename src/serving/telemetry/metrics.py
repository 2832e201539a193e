"""What the server measures: every metric's name, kind, labels and buckets in one table.

Core code records through the small :class:`Metrics` interface and never imports an
exporter. ``serving.deploy.ray_metrics`` exports through Ray's per-node metrics agent
(one scrape per node sums every replica process on it); tests use :class:`NullMetrics`.

Labels are bounded: model and version are names the repository serves (anything else is
``_unknown``), protocol is ``http`` or ``grpc``, outcome is ``ok`` or an ``ErrorKind``
value, or ``cancelled`` (the call was cancelled before an answer). No request ids or free text.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Any, Literal, Protocol

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
    "Inference requests ended, by outcome (ok, the error kind, or cancelled).",
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
DEADLINE_DROPPED = MetricSpec(
    "serving_deadline_dropped_requests",
    "counter",
    "Requests whose deadline (V2 timeout parameter or gRPC deadline) passed while queued: dropped without running.",
    ("model", "version"),
)
DIFF_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 1.0, 10.0, 100.0)
SHADOW_REQUESTS = MetricSpec(
    "serving_shadow_requests",
    "counter",
    "Copies of live requests sent to a shadow version, by outcome (compared, failed, dropped).",
    ("model", "version", "outcome"),
)
SHADOW_ROWS = MetricSpec(
    "serving_shadow_rows",
    "counter",
    "Rows a shadow version answered and that were compared with the primary's answer.",
    ("model", "version"),
)
SHADOW_AGREEMENTS = MetricSpec(
    "serving_shadow_agreements",
    "counter",
    "Compared rows where the shadow's answer agrees with the primary's (same argmax or label).",
    ("model", "version"),
)
SHADOW_MAX_ABS_DIFF = MetricSpec(
    "serving_shadow_max_abs_diff",
    "histogram",
    "Per request, the largest absolute difference between the shadow's and the primary's numeric outputs.",
    ("model", "version"),
    DIFF_BUCKETS,
)
SHADOW_SECONDS = MetricSpec(
    "serving_shadow_duration_seconds",
    "histogram",
    "Latency of the shadow version's answer (not seen by clients), seconds.",
    ("model", "version"),
    LATENCY_BUCKETS,
)
DRIFT_PSI = MetricSpec(
    "serving_drift_psi",
    "gauge",
    "Population Stability Index of an input feature over the recent window against the served version's training profile.",
    ("model", "version", "feature"),
)
DRIFT_ROWS = MetricSpec(
    "serving_drift_window_rows",
    "gauge",
    "Sampled rows in the drift window the PSI is computed from.",
    ("model", "version"),
)
PIPELINE_STEP_SECONDS = MetricSpec(
    "serving_pipeline_step_duration_seconds",
    "histogram",
    "Time one step of a pipeline took for one request (queue and model run of the step's model), seconds.",
    ("model", "version", "step"),
    LATENCY_BUCKETS,
)
LOG_ROWS = MetricSpec(
    "serving_log_rows",
    "counter",
    "Rows written to the prediction log (one per row of a logged request).",
    ("model", "version"),
)
LOG_DROPPED = MetricSpec(
    "serving_log_dropped_rows",
    "counter",
    "Rows of sampled requests the prediction log dropped: its queue was full, or its destination failed at shutdown.",
    ("model", "version"),
)
FEEDBACK_LABELS = MetricSpec(
    "serving_feedback_labels",
    "counter",
    "Labels received, by whether they matched a logged prediction (matched, unmatched).",
    ("model", "outcome"),
)
LIVE_ACCURACY = MetricSpec(
    "serving_live_accuracy",
    "gauge",
    "Accuracy over the last labelled predictions of the version (feedback matched with the prediction log).",
    ("model", "version"),
)
LIVE_LABELLED = MetricSpec(
    "serving_live_labelled_rows",
    "gauge",
    "Labelled predictions the live accuracy is computed over (at most the window).",
    ("model", "version"),
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
    DEADLINE_DROPPED,
    SHADOW_REQUESTS,
    SHADOW_ROWS,
    SHADOW_AGREEMENTS,
    SHADOW_MAX_ABS_DIFF,
    SHADOW_SECONDS,
    DRIFT_PSI,
    DRIFT_ROWS,
    PIPELINE_STEP_SECONDS,
    LOG_ROWS,
    LOG_DROPPED,
    FEEDBACK_LABELS,
    LIVE_ACCURACY,
    LIVE_LABELLED,
)


class Metrics(Protocol):
    """Where the server's measurements go."""

    def inc(self, spec: MetricSpec, labels: dict[str, str], value: float = 1.0) -> None: ...
    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None: ...
    def set(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None: ...
    def forget(self, model: str, version: str) -> None:
        """Stop exporting the gauges of a version that is gone (unloaded): its series end
        instead of reading "not ready" forever."""


class NullMetrics:
    """Records nothing."""

    def inc(self, spec: MetricSpec, labels: dict[str, str], value: float = 1.0) -> None:
        pass

    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        pass

    def set(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        pass

    def forget(self, model: str, version: str) -> None:
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

    def forget(self, model: str, version: str) -> None:
        gauges = {s.name: s for s in SPECS if s.kind == "gauge"}
        for key in list(self.values):
            spec = gauges.get(key[0])
            if spec is not None and spec.labels[:2] == ("model", "version") and key[1][:2] == (model, version):
                del self.values[key]


Key = tuple[str, tuple[tuple[str, str], ...]]


def le_label(bound: float) -> str:
    """A bucket bound as Prometheus clients print it (0.005, 1.0, +Inf)."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class AggregatedMetrics:
    """Keeps this process's totals in plain dicts (~0.3 us a call): counters and gauges by
    label values, histograms as per-bucket counts (+Inf last) followed by the sum.

    :meth:`snapshot` is what the operator page aggregates across replicas; exporters
    (``serving.deploy.ray_metrics``) read the same dicts.
    """

    def __init__(self) -> None:
        self._bounds = {spec.name: spec.buckets for spec in SPECS if spec.kind == "histogram"}
        self._counters: dict[Key, float] = {}
        self._histograms: dict[Key, list[float]] = {}
        self._gauges: dict[Key, float] = {}
        self._lock = threading.Lock()

    def inc(self, spec: MetricSpec, labels: dict[str, str], value: float = 1.0) -> None:
        key = (spec.name, tuple(labels.items()))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        key = (spec.name, tuple(labels.items()))
        bounds = self._bounds[spec.name]
        index = bisect.bisect_left(bounds, value)
        with self._lock:
            state = self._histograms.get(key)
            if state is None:
                state = self._histograms[key] = [0.0] * (len(bounds) + 2)
            state[index] += 1
            state[-1] += value

    def set(self, spec: MetricSpec, labels: dict[str, str], value: float) -> None:
        with self._lock:
            self._gauges[(spec.name, tuple(labels.items()))] = value

    def forget(self, model: str, version: str) -> None:
        with self._lock:
            for key in [k for k in self._gauges if ("model", model) in k[1] and ("version", version) in k[1]]:
                del self._gauges[key]

    def copy_state(self) -> tuple[dict[Key, float], dict[Key, list[float]], dict[Key, float]]:
        """(counters, histograms, gauges): consistent copies, taken under the lock."""
        with self._lock:
            return (
                dict(self._counters),
                {key: list(state) for key, state in self._histograms.items()},
                dict(self._gauges),
            )

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready totals: ``counters``/``gauges`` as [name, labels, value] and ``histograms``
        as [name, labels, per-bucket counts, sum], with each histogram's ``bounds``."""
        counters, histograms, gauges = self.copy_state()
        return {
            "counters": [[name, dict(labels), value] for (name, labels), value in counters.items()],
            "gauges": [[name, dict(labels), value] for (name, labels), value in gauges.items()],
            "histograms": [[name, dict(labels), state[:-1], state[-1]] for (name, labels), state in histograms.items()],
            "bounds": {name: list(bounds) for name, bounds in self._bounds.items()},
        }

"""The standalone server's Prometheus endpoint, served by prometheus-client.

Series carry the names Ray's metrics agent gives them in Ray mode (``ray_serving_requests_total``,
``ray_serving_request_duration_seconds_bucket``...), so the alert rules, the Grafana dashboard
and every query work on either mode; each worker's series carry its ``worker`` label, as Ray's
carry a ``WorkerId``. The values are the workers' :class:`AggregatedMetrics` snapshots, read at
scrape time: nothing is recorded into prometheus-client on the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.telemetry.metrics import SPECS, le_label

log = logging.getLogger(__name__)

PREFIX = "ray_"
"""Ray's metrics agent prefixes every application metric with ``ray_``; so does this endpoint."""
WORKER_LABEL = "worker"

FAMILIES: dict[str, Any] = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "histogram": HistogramMetricFamily,
}

Snapshots = Callable[[], list[tuple[str, dict[str, Any]]]]
"""(worker name, ``AggregatedMetrics.snapshot()``) for every worker."""


class SnapshotCollector(Collector):
    def __init__(self, snapshots: Snapshots) -> None:
        self._snapshots = snapshots
        self._specs = {spec.name: spec for spec in SPECS}

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {}
        for spec in SPECS:
            families[spec.name] = FAMILIES[spec.kind](
                PREFIX + spec.name, spec.description, labels=(*spec.labels, WORKER_LABEL)
            )
        for worker, snapshot in self._snapshots():
            for part in ("counters", "gauges"):
                for name, labels, value in snapshot.get(part, []):
                    if name in families:
                        families[name].add_metric(self._values(name, labels, worker), value)
            bounds = snapshot.get("bounds", {})
            for name, labels, counts, total in snapshot.get("histograms", []):
                if name not in families:
                    continue
                les = [le_label(b) for b in (*bounds.get(name, ()), float("inf"))]
                cumulative, buckets = 0.0, []
                for le, n in zip(les, counts):
                    cumulative += n
                    buckets.append((le, cumulative))
                families[name].add_metric(self._values(name, labels, worker), buckets, total)
        yield from families.values()

    def _values(self, name: str, labels: dict[str, str], worker: str) -> list[str]:
        return [*(str(labels.get(key, "")) for key in self._specs[name].labels), worker]


class MetricsEndpoint:
    """``/metrics`` on ``host:port`` in a thread of its own; :meth:`close` stops it."""

    def __init__(self, host: str, port: int, snapshots: Snapshots) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(snapshots))
        server, self._thread = start_http_server(port, addr=host, registry=registry)
        self._server: WSGIServer = server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

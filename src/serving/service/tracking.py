"""Requests metered (and, with tracing on, traced) under bounded labels; the totals and recent
errors the operator page reads; the load the autoscaler reads."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from serving.errors import ModelNotFoundError
from serving.registry.lane import VersionState
from serving.registry.versions import ModelRegistry
from serving.telemetry.metrics import UNKNOWN, AggregatedMetrics
from serving.telemetry.requests import InFlight, RequestTracker


class Tracking:
    """The requests of one process: in flight, metered under labels the repository bounds."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.in_flight = InFlight(registry.metrics)

    def track(
        self, name: str, version: str, protocol: str, request_id: str, carrier: Mapping[str, str] | None = None
    ) -> RequestTracker:
        """Meter (and, with tracing on, trace) one inference request: ``with tracking.track(...) as t:``.

        ``request_id``: the client's or a new one (logs carry it). ``carrier``: the request's
        headers or metadata (a W3C ``traceparent`` in it is continued).
        """
        return RequestTracker(
            self.registry.metrics, self.in_flight, self.metric_labels, name, version, protocol, request_id, carrier
        )

    def metric_labels(self, name: str, version: str) -> tuple[str, str]:
        """Bounded (model, version) labels: names the repository serves, else ``_unknown``."""
        try:
            versions = self.registry.versions(name)
        except ModelNotFoundError:
            return UNKNOWN, UNKNOWN
        if version:
            return name, version if any(str(mv.version) == version for mv in versions) else UNKNOWN
        ready = [mv for mv in versions if mv.state is VersionState.READY]
        return name, str(ready[0].version) if ready else UNKNOWN

    def live_snapshot(self) -> dict[str, Any]:
        """This process's totals and recent errors (``telemetry.live``); totals only when the
        metrics keep them (``AggregatedMetrics``)."""
        metrics = self.registry.metrics
        return {
            "time": time.time(),
            "metrics": metrics.snapshot() if isinstance(metrics, AggregatedMetrics) else {},
            "errors": self.in_flight.errors.items(),
        }

    def in_flight_and_queued(self) -> tuple[int, int]:
        """(requests in flight, requests waiting in batch queues) in this process: what the
        autoscaler reads."""
        return self.in_flight.total, sum(
            mv.batcher.queue_depth for mv in self.registry.all_versions() if mv.batcher is not None
        )

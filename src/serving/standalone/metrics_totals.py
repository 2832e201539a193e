"""One worker's metric totals across the generations a SIGHUP makes.

A reload builds a new service (new batchers, new registry) beside the running one and retires
the old one once it has drained. Each generation records into its own
:class:`~serving.telemetry.metrics.AggregatedMetrics`, so that the old one's last gauge writes
(a version set "not ready" as it closes) cannot overwrite the new one's. Counters and histograms
are summed over every generation, retired ones included, so that they never go backwards;
gauges are the newest generation's.
"""

from __future__ import annotations

import threading
from typing import Any

from serving.telemetry.metrics import SPECS, AggregatedMetrics, Key


class MetricsTotals:
    def __init__(self) -> None:
        self._live: list[AggregatedMetrics] = []
        self._counters: dict[Key, float] = {}
        self._histograms: dict[Key, list[float]] = {}
        self._lock = threading.Lock()

    def open(self) -> AggregatedMetrics:
        """A new generation's metrics (the newest: its gauges are the ones exported)."""
        metrics = AggregatedMetrics()
        with self._lock:
            self._live.append(metrics)
        return metrics

    def retire(self, metrics: AggregatedMetrics) -> None:
        """Fold a generation that has stopped into the totals."""
        counters, histograms, _ = metrics.copy_state()
        with self._lock:
            if metrics not in self._live:
                return
            self._live.remove(metrics)
            _add_counters(self._counters, counters)
            _add_histograms(self._histograms, histograms)

    def snapshot(self) -> dict[str, Any]:
        """The format of :meth:`AggregatedMetrics.snapshot`, over every generation."""
        with self._lock:
            live = list(self._live)
            counters = dict(self._counters)
            histograms = {k: list(v) for k, v in self._histograms.items()}
        gauges: dict[Key, float] = {}
        for index, metrics in enumerate(live):
            c, h, g = metrics.copy_state()
            _add_counters(counters, c)
            _add_histograms(histograms, h)
            if index == len(live) - 1:
                gauges = g
        return {
            "counters": [[name, dict(labels), value] for (name, labels), value in counters.items()],
            "gauges": [[name, dict(labels), value] for (name, labels), value in gauges.items()],
            "histograms": [[name, dict(labels), state[:-1], state[-1]] for (name, labels), state in histograms.items()],
            "bounds": {spec.name: list(spec.buckets) for spec in SPECS if spec.kind == "histogram"},
        }


def _add_counters(into: dict[Key, float], more: dict[Key, float]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0.0) + value


def _add_histograms(into: dict[Key, list[float]], more: dict[Key, list[float]]) -> None:
    for key, state in more.items():
        have = into.get(key)
        into[key] = list(state) if have is None else [a + b for a, b in zip(have, state)]

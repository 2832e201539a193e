"""What the operator page shows, from the server's own numbers: each replica's totals
(:class:`~serving.telemetry.metrics.AggregatedMetrics` snapshots) and its recent errors,
summed over every replica of the server per model version.

Totals, not rates: the page polls and takes differences (requests/s, error ratio, latency
quantiles and batch sizes from the histogram buckets that grew in between).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from serving.telemetry.metrics import BATCH_SIZE, IN_FLIGHT, QUEUE_DEPTH, REQUEST_SECONDS, REQUESTS

RECENT_ERRORS = 50
STALE_AFTER_S = 10.0
"""A replica whose last snapshot is older than this is gone (stopped or dead)."""


class RecentErrors:
    """The last failed requests of this process: time, model, version, protocol, error kind,
    message and request id. No payloads."""

    def __init__(self, size: int = RECENT_ERRORS) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, model: str, version: str, protocol: str, kind: str, message: str, request_id: str) -> None:
        item = {
            "time": time.time(),
            "model": model,
            "version": version,
            "protocol": protocol,
            "kind": kind,
            "message": message[:500],
            "request_id": request_id,
        }
        with self._lock:
            self._items.append(item)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._items)


def summarize(snapshots: Iterable[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """Sum replica snapshots (``{"replica", "node", "time", "metrics", "errors"}``) into totals per
    model version; snapshots older than STALE_AFTER_S are left out."""
    now = time.time() if now is None else now
    live = [s for s in snapshots if now - float(s.get("time", 0)) <= STALE_AFTER_S]
    models: dict[tuple[str, str], dict[str, Any]] = {}
    bounds: dict[str, list[float]] = {}

    def entry(labels: dict[str, str]) -> dict[str, Any] | None:
        model, version = labels.get("model", ""), labels.get("version", "")
        if not model or model.startswith("_") or not version or version.startswith("_"):
            return None
        return models.setdefault(
            (model, version),
            {
                "model": model,
                "version": version,
                "requests": 0.0,
                "failures": 0.0,
                "latency_buckets": [],
                "latency_sum": 0.0,
                "batches": 0.0,
                "batch_rows": 0.0,
                "queue_depth": 0.0,
            },
        )

    for snap in live:
        metrics = snap.get("metrics", {})
        bounds.update(metrics.get("bounds", {}))
        for name, labels, value in metrics.get("counters", []):
            e = entry(labels)
            if e is not None and name == REQUESTS.name:
                e["requests"] += value
                if labels.get("outcome") != "ok":
                    e["failures"] += value
        for name, labels, value in metrics.get("gauges", []):
            e = entry(labels)
            if e is not None and name == QUEUE_DEPTH.name:
                e["queue_depth"] += value
        for name, labels, counts, total in metrics.get("histograms", []):
            e = entry(labels)
            if e is None:
                continue
            if name == REQUEST_SECONDS.name:
                e["latency_buckets"] = _add(e["latency_buckets"], counts)
                e["latency_sum"] += total
            elif name == BATCH_SIZE.name:
                e["batches"] += sum(counts)
                e["batch_rows"] += total
    in_flight = sum(
        value for snap in live for name, _, value in snap.get("metrics", {}).get("gauges", []) if name == IN_FLIGHT.name
    )
    errors = sorted((e for snap in live for e in snap.get("errors", [])), key=lambda e: e["time"], reverse=True)
    return {
        "time": now,
        "replicas": [
            {"replica": s.get("replica", ""), "node": s.get("node", ""), "age_s": round(now - float(s["time"]), 2)}
            for s in live
        ],
        "latency_bounds": bounds.get(REQUEST_SECONDS.name, []),
        "in_flight": in_flight,
        "models": sorted(models.values(), key=lambda e: (e["model"], e["version"])),
        "errors": errors[:RECENT_ERRORS],
    }


def _add(a: list[float], b: list[float]) -> list[float]:
    if not a:
        return list(b)
    return [x + y for x, y in zip(a, b)]


HISTORY_KEEP_S = 300.0
"""How far back the operator page's charts reach when it opens."""
HISTORY_EVERY_S = 5.0
"""How often the history takes a summary (the page polls every second on its own)."""


class History:
    """The last HISTORY_KEEP_S of summaries (:func:`summarize`, errors left out), so that a page
    opened after traffic draws the last minutes at once instead of waiting for new requests."""

    def __init__(self, keep_s: float = HISTORY_KEEP_S, every_s: float = HISTORY_EVERY_S) -> None:
        self.keep_s = keep_s
        self.every_s = every_s
        self._items: deque[dict[str, Any]] = deque()

    def add(self, summary: dict[str, Any]) -> None:
        """Keep ``summary`` (once ``every_s`` has passed since the last one kept)."""
        t = float(summary["time"])
        if self._items and t - float(self._items[-1]["time"]) < self.every_s * 0.9:
            return
        self._items.append({k: summary[k] for k in ("time", "latency_bounds", "models")})
        while self._items and t - float(self._items[0]["time"]) > self.keep_s:
            self._items.popleft()

    def items(self) -> list[dict[str, Any]]:
        return list(self._items)

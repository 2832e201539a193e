"""The service's side of the prediction log: which versions log (the server's default with their
model.yaml's ``log:``), the route a request took, and the record the log keeps of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving.config.prediction_log import PredictionLogConfig
from serving.lifecycle.routing import ModelRouting
from serving.prediction_log.feedback import LiveAccuracy, logged_rows, match, store_labels
from serving.prediction_log.records import LogStream
from serving.prediction_log.writer import PredictionLog
from serving.registry.lane import ModelVersion
from serving.telemetry.metrics import FEEDBACK_LABELS, Metrics
from serving.types import FeedbackResult, Label

Arrays = dict[str, np.ndarray[Any, Any]]

SHADOW = "shadow"


def route_of(version: str, routing: ModelRouting | None) -> str:
    """How a request found its version: ``version`` (a number), ``alias:NAME``, ``split`` (traffic
    weights) or ``latest`` (the newest ready version)."""
    if version:
        return "version" if version.isdigit() else f"alias:{version}"
    if routing is not None and routing.weights:
        return "split"
    return "latest"


class PredictionLogging:
    """The log of every version of one service, and the streams that name where each goes."""

    def __init__(self, metrics: Metrics, default: PredictionLogConfig | None, root: Path | None) -> None:
        self.metrics = metrics
        self.log = PredictionLog(metrics)
        self.offer = self.log.hand_over_function()
        """Hand one answered request to the log when its id is in the sample (any thread;
        positional arguments: stream, request id, route, ``time.monotonic_ns()`` at its arrival,
        inputs, outputs, and for a failure its error kind and message). On every logged request's
        path: the writer thread does the rest."""
        self.live = LiveAccuracy(metrics)
        self._default = default or PredictionLogConfig()
        self._root = root or Path(".")
        self._streams: dict[tuple[str, int], tuple[object, LogStream | None]] = {}

    def stream(self, mv: ModelVersion) -> LogStream | None:
        """The version's log, None when it logs nothing (built once per loaded config)."""
        key = (mv.name, mv.version)
        known = self._streams.get(key)
        if known is not None and known[0] is mv.instance:
            return known[1]
        config = self._default.merged(mv.config.log, self._root)
        stream = (
            LogStream(
                mv.name,
                str(mv.version),
                config,
                mv.instance.inputs,
                mv.instance.outputs,
                mv.instance.max_batch_size > 0,
            )
            if config.enabled
            else None
        )
        self._streams[key] = (mv.instance, stream)
        return stream

    def receive_feedback(
        self, stream: LogStream, labels: list[Label], classes: tuple[str, ...] | None
    ) -> FeedbackResult:
        """Keep ``labels`` beside the model's log and score those that match a logged prediction
        (``classes``: the model's class names). Blocks on I/O: call it off the event loop."""
        self.log.flush()  # this process's waiting rows are matched too
        store_labels(stream, labels, self.log.writer, self.log.next_seq())
        found, rows = match(labels, logged_rows(stream, [x.request_id for x in labels]))
        self.live.add(stream, classes, found, rows)
        self.metrics.inc(FEEDBACK_LABELS, {"model": stream.model, "outcome": "matched"}, len(found))
        self.metrics.inc(FEEDBACK_LABELS, {"model": stream.model, "outcome": "unmatched"}, len(labels) - len(found))
        return FeedbackResult(len(labels), len(found), len(labels) - len(found))

    def close(self) -> None:
        self.log.close()

"""Feedback: labels for logged predictions, kept as Parquet beside the log
(``<destination>/_labels/model=M/date=D/``), matched with the logged rows by request id and row,
and scored into a rolling live accuracy per version."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from serving.lifecycle.evaluation import as_text, predicted_classes
from serving.prediction_log.files import LABELS_FOLDER, file_name, open_destination, partition_of, write_atomically
from serving.prediction_log.records import OK, REQUEST_ID, ROUTE, ROW, STATUS, TIME, LogStream
from serving.telemetry.metrics import LIVE_ACCURACY, LIVE_LABELLED, Metrics
from serving.types import Label

Array = np.ndarray[Any, Any]

LABEL = "label"
RECEIVED = "received"
LABEL_SCHEMA = pa.schema(
    [(REQUEST_ID, pa.string()), (ROW, pa.int32()), (LABEL, pa.string()), (RECEIVED, pa.timestamp("us", tz="UTC"))]
)
LIVE_WINDOW = 1000
"""Labelled predictions the live accuracy is computed over, per version."""


def store_labels(stream: LogStream, labels: list[Label], writer: str, seq: int) -> str:
    """Keep ``labels`` as one Parquet file under the model's labels folder; returns its path."""
    now = time.time()
    fs, root = open_destination(str(stream.config.destination))
    date, _ = partition_of(now)
    table = pa.table(
        {
            REQUEST_ID: pa.array([x.request_id for x in labels], pa.string()),
            ROW: pa.array([x.row for x in labels], pa.int32()),
            LABEL: pa.array([x.label for x in labels], pa.string()),
            RECEIVED: pa.array(np.full(len(labels), int(now * 1e6), np.int64)).cast(pa.timestamp("us", tz="UTC")),
        },
        schema=LABEL_SCHEMA,
    )
    folder = f"{root}/{LABELS_FOLDER}/model={stream.model}/date={date}"
    return write_atomically(fs, folder, file_name(writer, seq), table)


def logged_rows(stream: LogStream, request_ids: list[str]) -> pa.Table:
    """The answered (not shadow) rows the log holds for these request ids, every version of the
    model: request id, row, version, time and the logged output columns."""
    fs, root = open_destination(str(stream.config.destination))
    base = f"{root}/model={stream.model}"
    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return pa.table({REQUEST_ID: pa.array([], pa.string())})
    data = ds.dataset(base, filesystem=fs, format="parquet", partitioning="hive")
    wanted = [REQUEST_ID, ROW, TIME, "version", *(c for c in stream.output_columns.values() if c in data.schema.names)]
    where = (
        pc.field(REQUEST_ID).isin(pa.array(sorted(set(request_ids)), pa.string()))
        & (pc.field(STATUS) == OK)
        & (pc.field(ROUTE) != "shadow")
    )
    return data.to_table(columns=wanted, filter=where)


def column_values(table: pa.Table, name: str) -> Array:
    """A logged column as rows-first numpy values (lists flattened per row)."""
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        return np.asarray(pc.list_flatten(col).to_numpy(zero_copy_only=False)).reshape(len(col), -1)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def match(labels: list[Label], logged: pa.Table) -> tuple[list[Label], pa.Table]:
    """(labels found in ``logged``, the logged row of each of them, in the same order)."""
    if logged.num_rows == 0:
        return [], logged
    ids = logged.column(REQUEST_ID).to_pylist()
    rows = logged.column(ROW).to_pylist()
    where = {(i, r): n for n, (i, r) in enumerate(zip(ids, rows))}  # the last written wins
    found = [(x, where[(x.request_id, x.row)]) for x in labels if (x.request_id, x.row) in where]
    return [x for x, _ in found], logged.take(pa.array([n for _, n in found], pa.int64()))


class LiveAccuracy:
    """The last :data:`LIVE_WINDOW` labelled predictions of each version, in bounded memory,
    exported as ``serving_live_accuracy``."""

    def __init__(self, metrics: Metrics, window: int = LIVE_WINDOW) -> None:
        self.metrics = metrics
        self.window = window
        self._windows: dict[tuple[str, str], deque[bool]] = {}
        self._lock = threading.Lock()

    def add(self, stream: LogStream, labels: tuple[str, ...] | None, found: list[Label], logged: pa.Table) -> None:
        """Score matched labels against the logged answers (classifiers only: a regression has no accuracy)."""
        if not found:
            return
        outputs = [column_values(logged, c) for c in stream.output_columns.values() if c in logged.column_names]
        predicted = predicted_classes(outputs, labels)
        if predicted is None:
            return
        truth = as_text(np.asarray([x.label for x in found], dtype=object))
        versions = np.asarray(logged.column("version").to_pylist()).astype(str)
        for version in sorted(set(versions.tolist())):
            mine = versions == version
            with self._lock:
                window = self._windows.setdefault((stream.model, version), deque(maxlen=self.window))
                window.extend((truth[mine] == predicted[mine]).tolist())
                accuracy, count = float(np.mean(window)), float(len(window))
            series = {"model": stream.model, "version": version}
            self.metrics.set(LIVE_ACCURACY, series, accuracy)
            self.metrics.set(LIVE_LABELLED, series, count)

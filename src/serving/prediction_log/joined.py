"""A version's logged predictions joined with the labels that came back for them (by request id
and row; a row labelled twice keeps its latest label)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from serving.prediction_log.feedback import LABEL, RECEIVED
from serving.prediction_log.files import LABELS_FOLDER, open_destination
from serving.prediction_log.records import OK, REQUEST_ID, ROUTE, ROW, STATUS, TIME

TRUTH = "feedback:label"
"""The label's column in a joined table (a model may have an output named ``label``)."""


@dataclass(frozen=True)
class LabelledLog:
    """The labelled rows (the log's columns plus :data:`TRUTH`), and what they were drawn from."""

    table: pa.Table
    predictions: int
    """Answered rows of the version in the time range (labelled or not)."""
    first: dt.datetime | None
    last: dt.datetime | None


def _dataset(fs: pafs.FileSystem, path: str) -> ds.Dataset | None:
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    return ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive")


def labelled_predictions(destination: str, model: str, version: int, since: dt.datetime | None) -> LabelledLog:
    """Rows the version answered (not as a shadow) since ``since``, with their labels."""
    fs, root = open_destination(destination)
    log = _dataset(fs, f"{root}/model={model}/version={version}")
    if log is None:
        return LabelledLog(pa.table({}), 0, None, None)
    where = (pc.field(STATUS) == OK) & (pc.field(ROUTE) != "shadow")
    if since is not None:
        where &= pc.field(TIME) >= pa.scalar(since, pa.timestamp("us", tz="UTC"))
    answered = log.to_table(filter=where)
    times = answered.column(TIME)
    first = pc.min(times).as_py() if len(times) else None
    last = pc.max(times).as_py() if len(times) else None
    labels_data = _dataset(fs, f"{root}/{LABELS_FOLDER}/model={model}")
    if labels_data is None or not answered.num_rows:
        return LabelledLog(answered.slice(0, 0), answered.num_rows, first, last)
    labels = labels_data.to_table(columns=[REQUEST_ID, ROW, LABEL, RECEIVED]).sort_by(RECEIVED)
    labels = (
        labels.group_by([REQUEST_ID, ROW], use_threads=False)
        .aggregate([(LABEL, "last")])
        .rename_columns({f"{LABEL}_last": LABEL})
    )
    keys = zip(labels.column(REQUEST_ID).to_pylist(), labels.column(ROW).to_pylist())
    label_of = dict(zip(keys, labels.column(LABEL).to_pylist()))
    logged = zip(answered.column(REQUEST_ID).to_pylist(), answered.column(ROW).to_pylist())
    hits = [(n, label_of[k]) for n, k in enumerate(logged) if k in label_of]  # Arrow joins carry no list columns
    joined = answered.take(pa.array([n for n, _ in hits], pa.int64()))
    joined = joined.append_column(TRUTH, pa.array([v for _, v in hits], pa.string()))
    return LabelledLog(joined, answered.num_rows, first, last)

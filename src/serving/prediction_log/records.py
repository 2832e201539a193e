"""What one logged request holds, the log's columns, and the sampling by request id."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from serving.codecs import DATATYPES, numpy_dtype
from serving.config.prediction_log import PredictionLogConfig
from serving.types import TensorSpec

Array = np.ndarray[Any, Any]

REQUEST_ID = "request_id"
ROW = "row"
TIME = "time"
ROUTE = "route"
STATUS = "status"
ERROR = "error"
LATENCY_MS = "latency_ms"
META_SCHEMA = pa.schema(
    [
        (REQUEST_ID, pa.string()),
        (ROW, pa.int32()),
        (TIME, pa.timestamp("us", tz="UTC")),
        (ROUTE, pa.string()),
        (STATUS, pa.string()),
        (ERROR, pa.string()),
        (LATENCY_MS, pa.float64()),
    ]
)
PARTITION_KEYS = ("model", "version", "date", "hour")
OK = "ok"


def sampled(request_id: str, rate: float) -> bool:
    """Whether ``request_id`` is in a ``rate`` sample: the same id is always in it or always out,
    in every process (a retry lands where its first try did)."""
    if rate >= 1.0:
        return True
    return zlib.crc32(request_id.encode("utf-8", "surrogatepass")) < rate * 4294967296.0


@dataclass(slots=True)
class LoggedRequest:
    """One request as the request path hands it to the log, with as little work as it can:
    ``rows`` rows (the first dimension of each tensor); the writer makes columns of the rest.
    The log keeps its fields, not it (``writer.Pending``)."""

    request_id: str
    time_ns: int
    """When it was answered (``time.time_ns()``)."""
    route: str
    failure: tuple[str, str] | None
    """None: answered; else its error kind and message."""
    latency_ns: int
    rows: int
    inputs: dict[str, Array] | None
    outputs: dict[str, Array] | None
    nbytes: int = 0
    """What its arrays hold (the queue's bound in bytes counts it)."""


def nbytes_of(arrays: dict[str, Array] | None) -> int:
    """Bytes held by ``arrays``: numbers by their buffers, BYTES tensors by their elements."""
    if not arrays:
        return 0
    total = 0
    for values in arrays.values():
        total += values.nbytes if values.dtype.kind != "O" else sum(len(v) for v in values.reshape(-1).tolist())
    return total


def tensor_row_nbytes(spec: TensorSpec) -> int | None:
    """Bytes of one row of ``spec``'s tensor; None unless every dimension is fixed and the
    datatype has a fixed size."""
    if spec.datatype == "BYTES" or spec.datatype not in DATATYPES or any(d <= 0 for d in spec.shape):
        return None
    return numpy_dtype(spec.datatype).itemsize * math.prod(spec.shape)


def row_nbytes(specs: tuple[TensorSpec, ...]) -> int | None:
    """Bytes of one row of ``specs``' tensors; None unless each has a fixed row size."""
    total = 0
    for spec in specs:
        size = tensor_row_nbytes(spec)
        if size is None:
            return None
        total += size
    return total


@dataclass(frozen=True)
class LogStream:
    """One served version's log: where it goes, what it keeps, and its tensors' column names."""

    model: str
    version: str
    config: PredictionLogConfig
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batched: bool = True
    """False: the model takes no batch dimension, and each request is one row of the log."""
    input_columns: dict[str, str] = field(init=False)
    output_columns: dict[str, str] = field(init=False)
    labels: dict[str, str] = field(init=False)
    """The version's labels on the log's metrics."""
    key: tuple[str, str, str] = field(init=False)
    """Where its rows wait: (destination, model, version). Built once: the request path reads it."""
    row_nbytes: int | None = field(init=False)
    """Bytes of one row of the tensors kept, by their declared shapes; None where a kept tensor
    has a variable dimension or is BYTES (its requests are measured one by one)."""
    offer_facts: tuple[float, bool, bool, bool, int | None, tuple[str, str, str]] = field(init=False, repr=False)
    """What the compiled hand-over reads of it, in one tuple: (sample rate, batched, keeps
    inputs, keeps outputs, ``row_nbytes``, ``key``)."""

    def __post_init__(self) -> None:
        taken = set(META_SCHEMA.names) | set(PARTITION_KEYS)
        ins = {s.name: s.name if s.name not in taken else f"input:{s.name}" for s in self.inputs}
        taken |= set(ins.values())
        outs = {s.name: s.name if s.name not in taken else f"output:{s.name}" for s in self.outputs}
        object.__setattr__(self, "input_columns", ins if self.config.keep != "outputs" else {})
        object.__setattr__(self, "output_columns", outs if self.config.keep != "inputs" else {})
        object.__setattr__(self, "labels", {"model": self.model, "version": self.version})
        object.__setattr__(self, "key", (str(self.config.destination), self.model, self.version))
        kept = (self.inputs if self.input_columns else ()) + (self.outputs if self.output_columns else ())
        object.__setattr__(self, "row_nbytes", row_nbytes(kept) if self.batched else None)
        facts = (
            float(self.config.sample_rate),
            self.batched,
            bool(self.input_columns),
            bool(self.output_columns),
            self.row_nbytes,
            self.key,
        )
        object.__setattr__(self, "offer_facts", facts)

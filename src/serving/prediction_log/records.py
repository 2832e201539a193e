"""What one logged request holds, the log's columns, and the sampling by request id."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

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
    """One request as the log keeps it: ``rows`` rows, the first dimension of each tensor."""

    request_id: str
    time_s: float
    route: str
    status: str
    error: str | None
    latency_ms: float
    rows: int
    inputs: dict[str, Array] | None
    outputs: dict[str, Array] | None
    nbytes: int = 0
    """What its arrays hold (the queue's bound in bytes counts it)."""


def nbytes_of(arrays: dict[str, Array] | None) -> int:
    """Bytes held by ``arrays``: numbers by their buffers, BYTES tensors by their elements."""
    total = 0
    for values in (arrays or {}).values():
        total += values.nbytes if values.dtype != np.object_ else sum(len(v) for v in values.reshape(-1).tolist())
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

    def __post_init__(self) -> None:
        taken = set(META_SCHEMA.names) | set(PARTITION_KEYS)
        ins = {s.name: s.name if s.name not in taken else f"input:{s.name}" for s in self.inputs}
        taken |= set(ins.values())
        outs = {s.name: s.name if s.name not in taken else f"output:{s.name}" for s in self.outputs}
        object.__setattr__(self, "input_columns", ins if self.config.keep != "outputs" else {})
        object.__setattr__(self, "output_columns", outs if self.config.keep != "inputs" else {})

    @property
    def labels(self) -> dict[str, str]:
        return {"model": self.model, "version": self.version}

    @property
    def key(self) -> tuple[str, str, str]:
        return (str(self.config.destination), self.model, self.version)

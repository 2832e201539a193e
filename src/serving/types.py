"""Protocol-neutral request, response and metadata types (numpy inside)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ParamValue = str | int | float | bool
Parameters = dict[str, ParamValue]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A declared input or output: name, OIP datatype and shape (-1 = variable)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(slots=True)
class Tensor:
    """A named tensor. ``data`` has the numpy dtype matching ``datatype``."""

    name: str
    datatype: str
    data: np.ndarray[Any, Any]
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """The data's shape (numpy's own tuple of ints: per request, copying it cost ~0.4 us)."""
        shape: tuple[int, ...] = self.data.shape
        return shape


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for, with its per-output parameters."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """One inference request, as every adapter hands it to the service."""

    model_name: str
    inputs: list[Tensor]
    model_version: str = ""
    id: str = ""
    parameters: Parameters = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)
    deadline_s: float | None = None
    """``time.monotonic()`` by which the answer is due (the transport's deadline, e.g. gRPC's)."""
    header: Callable[[str], str | None] | None = None
    """Looks up one of the request's headers (gRPC: metadata) by lowercase name; a sticky
    traffic split reads its key with it."""
    request_id: str = ""
    """The transport's request id (``x-request-id``: the client's or a new one), echoed on the answer."""

    @property
    def log_id(self) -> str:
        """The id the prediction log keeps: the V2 ``id`` the client gave, else the transport's."""
        return self.id or self.request_id


@dataclass(slots=True)
class InferenceResponse:
    """The answer to an :class:`InferenceRequest`."""

    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """OIP model metadata: ``GET /v2/models/{name}[/versions/{v}]``."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    device: str = "cpu"
    """Where the version runs (cpu/gpu); HTTP metadata carries it as an extra field, and both
    protocols report it in the model configuration's instance_group kind."""
    parameters: Parameters = field(default_factory=dict)
    """The answering version and its lineage (``lineage.*``), as flat V2 parameters."""


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """What a served version is (the facts behind Triton's model configuration)."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    device: str
    version_policy: tuple[str, tuple[int, ...]]
    """("latest", (n,)), ("all", ()) or ("specific", (v, ...))."""
    max_queue_delay_us: int
    instances: int = 1
    """Worker threads running its batches at once (Triton's instance_group count)."""


@dataclass(frozen=True, slots=True)
class ModelVersionState:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str = ""


@dataclass(slots=True)
class DurationStat:
    """A count and a total duration, as Triton's StatisticDuration."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchStat:
    """Executions of one batch size (Triton's InferBatchStatistics)."""

    batch_size: int
    compute_input: DurationStat = field(default_factory=DurationStat)
    compute_infer: DurationStat = field(default_factory=DurationStat)
    compute_output: DurationStat = field(default_factory=DurationStat)


@dataclass(slots=True)
class ModelStats:
    """Per model version counters, the statistics extension's shape."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    success: DurationStat = field(default_factory=DurationStat)
    fail: DurationStat = field(default_factory=DurationStat)
    queue: DurationStat = field(default_factory=DurationStat)
    compute_input: DurationStat = field(default_factory=DurationStat)
    compute_infer: DurationStat = field(default_factory=DurationStat)
    compute_output: DurationStat = field(default_factory=DurationStat)
    batch_stats: dict[int, BatchStat] = field(default_factory=dict)
    deadline_dropped: int = 0
    """Requests dropped from the queue because their deadline passed (the model never ran them)."""


@dataclass(frozen=True, slots=True)
class Label:
    """The true answer for one row of a logged prediction (feedback), as text: 3, 3.0 and "3" are one class."""

    request_id: str
    label: str
    row: int = 0


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What became of the labels of one feedback call: each is kept; ``matched`` ones were found
    in the prediction log (the rest may match rows another replica has not written yet)."""

    received: int
    matched: int
    unmatched: int

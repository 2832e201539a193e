"""Loaded model versions and their readiness: (name, version) -> ModelVersion."""

from __future__ import annotations

import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.batching import DynamicBatcher
from serving.codecs import numpy_dtype
from serving.config import ModelConfig, TensorConfig
from serving.errors import ConfigError, ModelNotFoundError, ModelNotReadyError, ServingError
from serving.repository import ModelEntry
from serving.runtime import Model, create_model
from serving.telemetry.metrics import (
    BATCH_SIZE,
    COMPUTE_SECONDS,
    LOAD_SECONDS,
    QUEUE_CAPACITY,
    QUEUE_DEPTH,
    QUEUE_SECONDS,
    READY,
    Metrics,
    NullMetrics,
)
from serving.types import BatchStat, ModelStats, TensorSpec

log = logging.getLogger(__name__)

WARMUP_MAX_ROWS = 1024


class VersionState(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelVersion:
    """One served version: artifact, I/O contract, state, batcher and statistics."""

    name: str
    version: int
    config: ModelConfig
    model: Model
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    state: VersionState = VersionState.LOADING
    reason: str = ""
    load_seconds: float = 0.0
    output_datatypes: dict[str, str] = field(default_factory=dict)
    batcher: DynamicBatcher | None = None
    metrics: Metrics = field(default_factory=NullMetrics)
    stats: ModelStats = field(init=False)
    labels: dict[str, str] = field(init=False)
    _executor: ThreadPoolExecutor | None = None

    def __post_init__(self) -> None:
        self.stats = ModelStats(self.name, str(self.version))
        self.labels = {"model": self.name, "version": str(self.version)}

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def wire_shape(self, spec: TensorSpec) -> list[int]:
        """The shape clients see: a leading -1 batch dimension when batching."""
        return ([-1] if self.max_batch_size else []) + list(spec.shape)

    def on_batch(self, rows: int, queue_ns: Any, input_ns: int, infer_ns: int, output_ns: int, ok: bool) -> None:
        s = self.stats
        m = self.metrics
        for q in queue_ns:
            s.queue.add(q)
            m.observe(QUEUE_SECONDS, self.labels, q / 1e9)
        if self.batcher is not None:
            m.set(QUEUE_DEPTH, self.labels, self.batcher.queue_depth)
        if not ok:
            return
        m.observe(COMPUTE_SECONDS, self.labels, (input_ns + infer_ns + output_ns) / 1e9)
        m.observe(BATCH_SIZE, self.labels, rows)
        s.execution_count += 1
        s.inference_count += rows
        s.compute_input.add(input_ns, len(queue_ns))
        s.compute_infer.add(infer_ns, len(queue_ns))
        s.compute_output.add(output_ns, len(queue_ns))
        b = s.batch_stats.get(rows)
        if b is None:
            b = s.batch_stats[rows] = BatchStat(rows)
        b.compute_input.add(input_ns)
        b.compute_infer.add(infer_ns)
        b.compute_output.add(output_ns)

    def open(self) -> None:
        """Load the artifact, resolve the I/O contract and warm up (what online and batch share)."""
        self.model.load()
        self.inputs, self.outputs = _resolve_io(self)
        self.output_datatypes = {o.name: o.datatype for o in self.outputs}
        if self.config.instance.warmup:
            self.warm_up()

    def load(self) -> None:
        """Open the version and start its batcher (online serving)."""
        start = time.monotonic()
        self.open()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-v{self.version}")
        output_names = list(self.output_datatypes)
        batching = self.config.dynamic_batching
        self.batcher = DynamicBatcher(
            lambda arrays: self.model.predict(arrays, output_names),
            max_batch_size=self.max_batch_size,
            max_queue_delay_s=batching.max_queue_delay_ms / 1000.0,
            max_queue_size=batching.max_queue_size,
            executor=self._executor,
            observer=self,
            inline_below_s=self.config.instance.inline_below_ms / 1000.0,
            trace_attributes={"serving.model": self.name, "serving.version": str(self.version)},
        )
        self.load_seconds = time.monotonic() - start
        self.state = VersionState.READY
        self.metrics.set(LOAD_SECONDS, self.labels, self.load_seconds)
        self.metrics.set(QUEUE_CAPACITY, self.labels, batching.max_queue_size)
        self.metrics.set(QUEUE_DEPTH, self.labels, 0)
        self.metrics.set(READY, self.labels, 1)

    def warm_up(self) -> None:
        """Run zero-filled batches at batch sizes 1 and max_batch_size (at most WARMUP_MAX_ROWS;
        variable dims = 1), so the first user request does not pay for kernel selection,
        allocation or CUDA init. A model that rejects the synthetic input only logs: its real
        inputs may need other sizes."""
        configured = self.config.instance.warmup_batch_sizes
        if not self.max_batch_size:
            sizes = [0]
        elif configured:
            sizes = sorted({min(b, self.max_batch_size) for b in configured})
        else:
            sizes = sorted({1, min(self.max_batch_size, WARMUP_MAX_ROWS)})
        names = list(self.output_datatypes)
        for rows in sizes:
            arrays = {s.name: _zeros(s, rows) for s in self.inputs}
            try:
                self.model.predict(arrays, names)
            except ServingError as exc:
                log.warning("warm-up of %s v%d at batch %d failed: %s", self.name, self.version, rows, exc.message)
                return

    async def close(self) -> None:
        self.state = VersionState.UNAVAILABLE
        self.reason = "unloaded"
        self.metrics.set(READY, self.labels, 0)
        if self.batcher is not None:
            await self.batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.model.unload()


def _zeros(spec: TensorSpec, rows: int) -> np.ndarray[Any, Any]:
    shape = ([rows] if rows else []) + [d if d > 0 else 1 for d in spec.shape]
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))


def _resolve_io(mv: ModelVersion) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Declared I/O wins; ONNX models may leave it out (read from the model, minus the batch dim)."""
    declared_in, declared_out = mv.config.inputs, mv.config.outputs
    model_in, model_out = mv.model.signature()

    def from_model(specs: tuple[TensorSpec, ...], what: str) -> tuple[TensorSpec, ...]:
        out = []
        for s in specs:
            shape = s.shape
            if mv.max_batch_size:
                if not shape or shape[0] not in (-1,):
                    raise ConfigError(
                        f"model {mv.name}: {what} {s.name!r} has shape {list(shape)}; with max_batch_size > 0 "
                        "its first dimension must be dynamic (the batch)"
                    )
                shape = shape[1:]
            out.append(TensorSpec(s.name, s.datatype, shape))
        return tuple(out)

    def from_config(ts: tuple[TensorConfig, ...]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, t.shape) for t in ts)

    inputs = from_config(declared_in) if declared_in else from_model(model_in, "input")
    outputs = from_config(declared_out) if declared_out else from_model(model_out, "output")
    if model_in:
        known = {s.name for s in model_in}
        unknown = [s.name for s in inputs if s.name not in known]
        if unknown:
            raise ConfigError(f"model {mv.name}: model.yaml declares inputs {unknown} the model does not have")
    if model_out:
        known = {s.name for s in model_out}
        unknown = [s.name for s in outputs if s.name not in known]
        if unknown:
            raise ConfigError(f"model {mv.name}: model.yaml declares outputs {unknown} the model does not have")
    return inputs, outputs


class ModelRegistry:
    """Every model version the server knows, loaded or not."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics: Metrics = metrics or NullMetrics()
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._entries: dict[str, ModelEntry] = {}

    def load_entries(self, entries: list[ModelEntry]) -> None:
        """Load the selected versions of each entry; a failure marks only that version."""
        for entry in entries:
            self._entries[entry.name] = entry
            versions = self._models.setdefault(entry.name, {})
            for v in entry.selected:
                mv = ModelVersion(
                    entry.name, v, entry.config, create_model(entry.config, entry.version_dir(v)), metrics=self.metrics
                )
                versions[v] = mv
                try:
                    mv.load()
                    log.info(
                        "model %s version %d ready in %.2fs on %s", entry.name, v, mv.load_seconds, mv.model.device
                    )
                except ServingError as exc:
                    mv.state, mv.reason = VersionState.UNAVAILABLE, exc.message
                    self.metrics.set(READY, mv.labels, 0)
                    log.error("model %s version %d failed to load: %s", entry.name, v, exc.message)

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ModelVersion]:
        """All known versions of a model, newest first.

        Raises:
            ModelNotFoundError: unknown model.
        """
        try:
            versions = self._models[name]
        except KeyError:
            raise ModelNotFoundError(f"unknown model {name!r}") from None
        return [versions[v] for v in sorted(versions, reverse=True)]

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The version asked for, or the newest ready one when ``version`` is empty.

        Raises:
            ModelNotFoundError: unknown model, or a version that is not served.
            ModelNotReadyError: the version exists but is not ready.
        """
        versions = self.versions(name)
        if version:
            if not version.isdigit():
                raise ModelNotFoundError(f"model {name!r} has no version {version!r} (versions are integers)")
            for mv in versions:
                if mv.version == int(version):
                    if mv.state is not VersionState.READY:
                        raise ModelNotReadyError(
                            f"model {name!r} version {version} is not ready: {mv.reason or mv.state.value}"
                        )
                    return mv
            served = ", ".join(str(mv.version) for mv in versions)
            raise ModelNotFoundError(f"model {name!r} has no version {version} (served: {served})")
        for mv in versions:
            if mv.state is VersionState.READY:
                return mv
        raise ModelNotReadyError(f"model {name!r} has no ready version")

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self.versions(name)]

    def entry(self, name: str) -> ModelEntry:
        self.versions(name)
        return self._entries[name]

    async def close(self) -> None:
        for mv in self.all_versions():
            await mv.close()

"""The data plane: what every protocol adapter calls (OIP semantics, no wire types).

``LocalInferenceService`` hosts the models in this process: a registry of loaded
versions, one dynamic batcher per version, and the input checks of the OIP spec
(inference_rest.md, "Inference Request JSON Object").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from serving import codecs
from serving.codecs import shape_matches
from serving.control.admin import ModelAdmin
from serving.control.reconcile import Reconciler, startup_stamps
from serving.control.shadow import ShadowRunner
from serving.control.store import LifecycleStore
from serving.errors import InvalidInputError, ModelNotFoundError, ModelNotReadyError, ServingError
from serving.lifecycle.lineage import Lineage
from serving.loaded_model import LoadedModel
from serving.registry import ModelRegistry, VersionState
from serving.repository import scan_repository
from serving.telemetry.metrics import DRIFT_PSI, DRIFT_ROWS, UNKNOWN, AggregatedMetrics, Metrics
from serving.telemetry.requests import InFlight, RequestTracker
from serving.types import (
    InferenceRequest,
    InferenceResponse,
    ModelDescription,
    ModelMetadata,
    ModelStats,
    ModelVersionState,
    Tensor,
    TensorSpec,
)
from serving.version import SERVER_VERSION

log = logging.getLogger(__name__)
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
    "parameters",
)


class InferenceService(Protocol):
    """What the HTTP and gRPC adapters need; the Triton extensions included."""

    server_name: str
    admin: ModelAdmin | None

    def live(self) -> bool: ...
    def ready(self) -> bool: ...
    def server_metadata(self) -> dict[str, Any]: ...
    def model_metadata(self, name: str, version: str = "") -> ModelMetadata: ...
    def model_ready(self, name: str, version: str = "") -> bool: ...
    def model_config(self, name: str, version: str = "") -> ModelDescription: ...
    def statistics(self, name: str = "", version: str = "") -> list[ModelStats]: ...
    def repository_index(self, ready_only: bool = False) -> list[ModelVersionState]: ...
    def live_snapshot(self) -> dict[str, Any]: ...
    def admit(self, name: str, version: str = "") -> None: ...
    async def infer(self, request: InferenceRequest) -> InferenceResponse: ...
    def track(
        self, name: str, version: str, protocol: str, request_id: str, carrier: Mapping[str, str] | None = None
    ) -> RequestTracker: ...


class LocalInferenceService:
    """Hosts every model of a repository in this process."""

    def __init__(self, registry: ModelRegistry, server_name: str = "serving", admin: ModelAdmin | None = None) -> None:
        self.registry = registry
        self.server_name = server_name
        self._in_flight = InFlight(registry.metrics)
        self._shadows = ShadowRunner(registry.metrics)
        self.admin = admin
        """Operator commands; None for a fixed set of models (no repository control)."""
        self._drift_task: asyncio.Task[None] | None = None

    @classmethod
    def from_repository(
        cls,
        root: Path,
        server_name: str = "serving",
        metrics: Metrics | None = None,
        state_dir: Path | None = None,
        drain_s: float = 30.0,
    ) -> LocalInferenceService:
        """Scan and load a repository, with the routing operators set (kept in ``state_dir``,
        by default ``<root>/_serving``).

        Raises:
            ConfigError: the repository, a model.yaml or the state file is invalid.
        """
        registry = ModelRegistry(metrics)
        store = LifecycleStore(state_dir if state_dir is not None else root / "_serving")
        state = store.read()
        registry.routing = dict(state.models)
        entries = []
        for entry in scan_repository(root):
            routing = state.routing(entry.name)
            keep = () if routing.model_unloaded else tuple(v for v in entry.selected if v not in routing.unloaded)
            entries.append(dataclasses.replace(entry, selected=keep))
        loaded = startup_stamps(entries, {name: r.generation for name, r in registry.routing.items()})
        registry.load_entries(entries)
        reconciler = Reconciler(registry, store, root, drain_s, loaded, state.revision)
        return cls(registry, server_name, ModelAdmin(registry, store, reconciler))

    def start_watch(self, scan_repository: bool = True) -> None:
        """Follow the shared routing and, with ``scan_repository``, the repository folder (call
        on the serving loop)."""
        if self.admin is not None:
            self.admin.reconciler.start(scan_repository)
        if self._drift_task is None:
            self._drift_task = asyncio.get_running_loop().create_task(self._watch_drift())
            self._drift_task.add_done_callback(_report_death)

    async def _watch_drift(self) -> None:
        """Once a second: each watched version's PSI per feature, exported as gauges."""
        while True:
            await asyncio.sleep(DRIFT_TICK_S)
            for mv in self.registry.all_versions():
                if mv.drift is None or mv.state is not VersionState.READY:
                    continue
                try:
                    scores, rows = await asyncio.to_thread(mv.drift.tick)
                except Exception:  # one version's window failing must not stop the others' watch
                    log.exception("drift watch of %s v%d failed this round", mv.name, mv.version)
                    continue
                self.registry.metrics.set(DRIFT_ROWS, mv.labels, rows)
                for feature, value in scores.items():
                    self.registry.metrics.set(DRIFT_PSI, {**mv.labels, "feature": feature}, value)

    def track(
        self, name: str, version: str, protocol: str, request_id: str, carrier: Mapping[str, str] | None = None
    ) -> RequestTracker:
        """Meter (and, with tracing on, trace) one inference request: ``with service.track(...) as t:``.

        ``request_id``: the client's or a new one (logs carry it). ``carrier``: the request's
        headers or metadata (a W3C ``traceparent`` in it is continued).
        """
        return RequestTracker(
            self.registry.metrics, self._in_flight, self.metric_labels, name, version, protocol, request_id, carrier
        )

    def live_snapshot(self) -> dict[str, Any]:
        """This process's totals and recent errors (``telemetry.live``); totals only when the
        metrics keep them (``AggregatedMetrics``)."""
        metrics = self.registry.metrics
        return {
            "time": time.time(),
            "metrics": metrics.snapshot() if isinstance(metrics, AggregatedMetrics) else {},
            "errors": self._in_flight.errors.items(),
        }

    def load(self) -> tuple[int, int]:
        """(requests in flight, requests waiting in batch queues) in this process: what the
        autoscaler reads."""
        return self._in_flight.total, sum(
            mv.batcher.queue_depth for mv in self.registry.all_versions() if mv.batcher is not None
        )

    async def close(self) -> None:
        """Stop every version's batcher; requests still waiting are answered UNAVAILABLE."""
        if self.admin is not None:
            await self.admin.reconciler.stop()
        if self._drift_task is not None:
            self._drift_task.cancel()
            await asyncio.gather(self._drift_task, return_exceptions=True)
        await self.registry.close()

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

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready when every model has a ready version (Triton's strict readiness); a model an
        operator unloaded does not count."""
        return all(
            any(mv.state is VersionState.READY for mv in versions) or all(mv.reason == "unloaded" for mv in versions)
            for versions in map(self.registry.versions, self.registry.names())
        )

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        """OIP model metadata.

        Raises:
            ModelNotFoundError, ModelNotReadyError.
        """
        served = self.registry.get(name, version)
        mv = served.loaded
        versions = tuple(str(v.version) for v in self.registry.versions(name) if v.state is VersionState.READY)
        return ModelMetadata(
            name=name,
            versions=versions,
            platform=mv.model.platform,
            inputs=tuple(TensorSpec(s.name, s.datatype, tuple(mv.wire_shape(s))) for s in mv.inputs),
            outputs=tuple(TensorSpec(s.name, s.datatype, tuple(mv.wire_shape(s))) for s in mv.outputs),
            device=mv.model.device,
            parameters={"served_version": str(served.version), **lineage_parameters(served.lineage)},
        )

    def model_config(self, name: str, version: str = "") -> ModelDescription:
        """What the version is (Triton's model configuration is built from it by the adapters).

        Raises:
            ModelNotFoundError, ModelNotReadyError.
        """
        return describe(self.registry.get(name, version).loaded)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the version is ready; unknown models raise.

        Raises:
            ModelNotFoundError.
        """
        try:
            self.registry.get(name, version)
        except ModelNotReadyError:
            return False
        return True

    def statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        """Statistics of one version, every version of a model, or everything.

        Raises:
            ModelNotFoundError.
        """
        if name and version:
            return [self.registry.get(name, version).stats]
        versions = self.registry.versions(name) if name else self.registry.all_versions()
        return [mv.stats for mv in versions if mv.state is VersionState.READY]

    def repository_index(self, ready_only: bool = False) -> list[ModelVersionState]:
        rows = [
            ModelVersionState(mv.name, str(mv.version), mv.state.value, mv.reason)
            for mv in self.registry.all_versions()
        ]
        return [r for r in rows if r.state == VersionState.READY.value] if ready_only else rows

    def admit(self, name: str, version: str = "") -> None:
        """Refuse a request before it is decoded when the version it would go to has a full
        queue: under overload a refusal then costs little more than reading the request, and
        the CPU stays with the model (measured: bench/results/overload.md).

        Raises:
            QueueFullError. Unknown models and versions pass: ``infer`` reports them.
        """
        try:
            mv = self.registry.get(name, version)
        except ServingError:
            return
        if mv.batcher is not None:
            mv.batcher.admit()

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Check the request against the model version and run it through its batcher.

        Raises:
            ModelNotFoundError, ModelNotReadyError, InvalidInputError, QueueFullError,
            ModelExecutionError.
        """
        start = time.monotonic_ns()
        mv = self.registry.get(request.model_name, request.model_version, request.header)
        try:
            arrays = check_inputs(mv.loaded, request.inputs)
            wanted = check_outputs(mv.loaded, request)
            assert mv.batcher is not None
            mv.active += 1
            try:
                results = await mv.batcher.submit(arrays, request_deadline(request, start))
            finally:
                mv.active -= 1
        except ServingError:
            mv.stats.fail.add(time.monotonic_ns() - start)
            raise
        try:  # watching is never worth a served request: a failure here is logged, the answer sent
            if mv.drift is not None:
                mv.drift.observe(arrays)
            shadow = self.registry.shadow_of(mv.name, mv)
            if shadow is not None:  # handed over once this task yields: after the answer is on its way
                asyncio.get_running_loop().call_soon(self._shadows.send, shadow, arrays, results)
        except Exception:
            log.exception("drift sampling or the shadow hand-off failed for %s v%d", mv.name, mv.version)
        datatypes = mv.loaded.output_datatypes
        outputs = [Tensor(name, datatypes[name], results[name]) for name in wanted]
        mv.stats.success.add(time.monotonic_ns() - start)
        mv.stats.last_inference_ms = int(time.time() * 1000)
        return InferenceResponse(
            model_name=mv.name,
            model_version=str(mv.version),
            outputs=outputs,
            id=request.id,
        )


MAX_TIMEOUT_US = 24 * 3600 * 1_000_000
DRIFT_TICK_S = 1.0


def _report_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the drift watch died: PSI gauges stop updating", exc_info=task.exception())


def lineage_parameters(lineage: Lineage | None) -> dict[str, str]:
    """The lineage facts model metadata carries, as flat string parameters."""
    if lineage is None:
        return {}
    out = {}
    if lineage.artifact is not None:
        out["lineage.artifact_sha256"] = lineage.artifact.sha256
    if lineage.training_data is not None:
        out["lineage.training_data_fingerprint"] = lineage.training_data.fingerprint
    for key in ("code_revision", "created_by", "created_at"):
        value = getattr(lineage, key)
        if value is not None:
            out[f"lineage.{key}"] = str(value)
    if lineage.evaluation is not None:
        for metric, value in lineage.evaluation.metrics.items():
            out[f"lineage.evaluation.{metric}"] = f"{value:.6g}"
    return out


def request_deadline(request: InferenceRequest, start_ns: int) -> float | None:
    """When the answer is due (``time.monotonic()``): the transport's deadline, or the V2
    ``timeout`` parameter (microseconds from arrival), whichever comes first.

    Raises:
        InvalidInputError: a ``timeout`` that is not a positive integer.
    """
    timeout = request.parameters.get("timeout")
    deadline = request.deadline_s
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= MAX_TIMEOUT_US:
            raise InvalidInputError(
                f"parameter 'timeout' must be a positive integer of microseconds (at most {MAX_TIMEOUT_US}), "
                f"got {str(timeout)[:32]!r}"
            )
        by_timeout = start_ns / 1e9 + timeout / 1e6
        deadline = by_timeout if deadline is None else min(deadline, by_timeout)
    return deadline


def check_inputs(mv: LoadedModel, tensors: list[Tensor]) -> dict[str, np.ndarray[Any, Any]]:
    """Match request tensors to the model's declared inputs.

    Raises:
        InvalidInputError: a missing, extra or duplicated input, a wrong datatype or shape,
            or batch sizes that differ between inputs.
    """
    specs = {s.name: s for s in mv.inputs}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for t in tensors:
        spec = specs.get(t.name)
        if spec is None:
            raise InvalidInputError(f"unexpected input {t.name!r} for model {mv.name!r}; expected {sorted(specs)}")
        if t.name in arrays:
            raise InvalidInputError(f"input {t.name!r} given more than once")
        if t.datatype != spec.datatype:
            raise InvalidInputError(
                f"input {t.name!r} has datatype {t.datatype}, model {mv.name!r} expects {spec.datatype}"
            )
        shape = t.shape
        declared = mv.wire_shape(spec)
        ok = shape_matches(shape, declared) and (not mv.max_batch_size or shape[0] >= 1)
        if not ok:
            raise InvalidInputError(
                f"input {t.name!r} has shape {list(shape)}, model {mv.name!r} expects {declared}"
                + (f" (first dimension is the batch, 1..{mv.max_batch_size})" if mv.max_batch_size else "")
            )
        codecs.check_finite(t.data, f"input {t.name!r}")
        arrays[t.name] = t.data
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise InvalidInputError(f"missing input(s) {missing} for model {mv.name!r}")
    if mv.max_batch_size:
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) > 1:
            raise InvalidInputError(f"inputs disagree on the batch dimension: {sorted(sizes)}")
    return arrays


def check_outputs(mv: LoadedModel, request: InferenceRequest) -> list[str]:
    """The output names to return (all when the request names none).

    Raises:
        InvalidInputError: an unknown or duplicated output name.
    """
    known = [s.name for s in mv.outputs]
    if not request.outputs:
        return known
    names = [o.name for o in request.outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInputError(f"unknown output(s) {unknown} for model {mv.name!r}; outputs are {known}")
    if len(set(names)) != len(names):
        raise InvalidInputError(f"output requested more than once: {names}")
    return names


def describe(mv: LoadedModel) -> ModelDescription:
    """The served version's description (adapters turn it into Triton's config)."""
    policy = mv.config.version_policy
    if policy.all:
        vp: tuple[str, tuple[int, ...]] = ("all", ())
    elif policy.specific is not None:
        vp = ("specific", tuple(policy.specific))
    else:
        vp = ("latest", (policy.latest or 1,))
    return ModelDescription(
        name=mv.name,
        platform=mv.model.platform,
        max_batch_size=mv.max_batch_size,
        inputs=mv.inputs,
        outputs=mv.outputs,
        device=mv.model.device,
        version_policy=vp,
        max_queue_delay_us=int(mv.config.dynamic_batching.max_queue_delay_ms * 1000),
    )

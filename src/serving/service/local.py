""":class:`LocalInferenceService`: every model of a repository hosted in this process, a registry
of loaded versions with one dynamic batcher each, behind the input checks of the OIP spec
(inference_rest.md, "Inference Request JSON Object")."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from serving.config.prediction_log import PredictionLogConfig
from serving.control.admin import ModelAdmin
from serving.control.reconcile import Reconciler, startup_stamps
from serving.control.shadow import ShadowRunner
from serving.control.store import LifecycleStore
from serving.errors import InvalidInputError, ServingError
from serving.registry.lane import ModelVersion, VersionState
from serving.registry.versions import ModelRegistry
from serving.repository import scan_repository
from serving.rows import raise_for_failed_rows
from serving.service import metadata
from serving.service.checks import check_inputs, check_outputs, request_deadline
from serving.service.classification import RANK_INLINE_VALUES, ranked_outputs, top_classes
from serving.service.drift_watch import DriftWatch
from serving.service.prediction_logging import SHADOW, PredictionLogging, route_of
from serving.service.tracking import Tracking
from serving.telemetry.metrics import Metrics
from serving.telemetry.requests import RequestTracker
from serving.types import (
    FeedbackResult,
    InferenceRequest,
    InferenceResponse,
    Label,
    ModelDescription,
    ModelMetadata,
    ModelStats,
    ModelVersionState,
    Tensor,
)

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray[Any, Any]]


async def as_classes(t: Tensor, count: int, mv: ModelVersion) -> Tensor:
    """Output ``t`` as its top ``count`` classes a row; ranked on a thread past ``RANK_INLINE_VALUES``
    values, so that no sort holds the event loop (64 rows of 1,000 classes took 4.2 ms)."""
    args = (t.data, count, mv.instance.max_batch_size > 0, mv.config.labels)
    if t.data.size <= RANK_INLINE_VALUES:
        return Tensor(t.name, "BYTES", top_classes(*args))
    return Tensor(t.name, "BYTES", await asyncio.to_thread(top_classes, *args))


class LocalInferenceService:
    """Hosts every model of a repository in this process."""

    def __init__(
        self,
        registry: ModelRegistry,
        server_name: str = "serving",
        admin: ModelAdmin | None = None,
        prediction_log: PredictionLogConfig | None = None,
        root: Path | None = None,
    ) -> None:
        self.registry = registry
        self.server_name = server_name
        self.tracking = Tracking(registry)
        self.logging = PredictionLogging(registry.metrics, prediction_log, root)
        """The prediction log (``prediction_log``: every model's default; ``root``: the repository,
        which relative model.yaml log folders are taken from)."""
        self._shadows = ShadowRunner(registry.metrics, self._log_shadow)
        self._drift = DriftWatch(registry)
        self.admin = admin
        """Operator commands; None for a fixed set of models (no repository control)."""

    @classmethod
    def from_repository(
        cls,
        root: Path,
        server_name: str = "serving",
        metrics: Metrics | None = None,
        state_dir: Path | None = None,
        drain_s: float = 30.0,
        prediction_log: PredictionLogConfig | None = None,
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
        return cls(registry, server_name, ModelAdmin(registry, store, reconciler), prediction_log, root)

    def start_watch(self, scan_repository: bool = True) -> None:
        """Follow the shared routing and, with ``scan_repository``, the repository folder (call
        on the serving loop)."""
        if self.admin is not None:
            self.admin.reconciler.start(scan_repository)
        self._drift.start()

    async def close(self) -> None:
        """Stop every version's batcher; requests still waiting are answered UNAVAILABLE."""
        if self.admin is not None:
            await self.admin.reconciler.stop()
        await self._drift.stop()
        await self._shadows.close()
        await self.registry.close()
        await asyncio.to_thread(self.logging.close)  # after the last answer: drain loses no logged row

    def _log_shadow(self, shadow: ModelVersion, request_id: str, start_ns: int, arrays: Arrays, answer: Arrays) -> None:
        """A shadow version's answer to a copy, logged under the primary's request id (any thread)."""
        stream = self.logging.stream(shadow)
        if stream is not None:
            self.logging.offer(stream, request_id, SHADOW, start_ns, arrays, answer)

    # Tracking: meters, the operator page's snapshot, the autoscaler's load.
    def track(
        self, name: str, version: str, protocol: str, request_id: str, carrier: Mapping[str, str] | None = None
    ) -> RequestTracker:
        return self.tracking.track(name, version, protocol, request_id, carrier)

    def live_snapshot(self) -> dict[str, Any]:
        return self.tracking.live_snapshot()

    def in_flight_and_queued(self) -> tuple[int, int]:
        return self.tracking.in_flight_and_queued()

    def metric_labels(self, name: str, version: str) -> tuple[str, str]:
        return self.tracking.metric_labels(name, version)

    # Health.
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready when every model has a ready version (Triton's strict readiness); a model an
        operator unloaded does not count."""
        return all(
            any(mv.state is VersionState.READY for mv in versions) or all(mv.reason == "unloaded" for mv in versions)
            for versions in map(self.registry.versions, self.registry.names())
        )

    # Metadata, configuration, statistics and the repository index.
    def server_metadata(self) -> dict[str, Any]:
        return metadata.server_metadata(self.server_name)

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        return metadata.model_metadata(self.registry, name, version)

    def model_config(self, name: str, version: str = "") -> ModelDescription:
        """What the version is (Triton's model configuration is built from it by the adapters).

        Raises:
            ModelNotFoundError, ModelNotReadyError.
        """
        return metadata.describe(self.registry.get(name, version).instance)

    def model_ready(self, name: str, version: str = "") -> bool:
        return metadata.model_ready(self.registry, name, version)

    def statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        return metadata.statistics(self.registry, name, version)

    def repository_index(self, ready_only: bool = False) -> list[ModelVersionState]:
        return metadata.repository_index(self.registry, ready_only)

    # Feedback.
    async def feedback(self, name: str, labels: list[Label]) -> FeedbackResult:
        """Keep labels for the model's logged predictions and count those that match one.

        Raises:
            ModelNotFoundError; InvalidInputError: the model has no prediction log.
        """
        versions = self.registry.versions(name)
        stream = next((s for mv in versions if (s := self.logging.stream(mv)) is not None), None)
        if stream is None:
            raise InvalidInputError(
                f"model {name!r} keeps no prediction log, so labels cannot be matched: set prediction_log "
                "(server) or log: (model.yaml) with a destination"
            )
        if not labels:
            return FeedbackResult(0, 0, 0)
        return await asyncio.to_thread(self.logging.receive_feedback, stream, labels, versions[0].config.labels)

    # Admission and inference.
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
        stream = self.logging.stream(mv)
        arrays = None
        try:
            arrays = check_inputs(mv.instance, request.inputs)
            wanted = check_outputs(mv.instance, request)
            if request.outputs:  # Triton's classification extension, checked before the model runs
                first = next(iter(arrays.values()), None)
                rows = len(first) if first is not None and first.ndim and mv.instance.max_batch_size > 0 else 1
                ranked = ranked_outputs(request.outputs, mv.instance.output_specs, rows)
            else:
                ranked = {}
            mv.active += 1
            try:
                deadline = request_deadline(request, start)
                if mv.pipeline is not None:
                    results = await mv.pipeline.run(arrays, deadline)
                else:
                    assert mv.batcher is not None
                    results = await mv.batcher.submit(arrays, deadline)
            finally:
                mv.active -= 1
            raise_for_failed_rows(results, mv.name)
        except ServingError as exc:
            mv.stats.fail.add(time.monotonic_ns() - start)
            if stream is not None:
                try:  # the request's own error goes out, whatever the log does
                    route = route_of(request.model_version, self.registry.routing.get(mv.name))
                    failure = (exc.kind.value, exc.message)
                    self.logging.offer(stream, request.log_id, route, start, arrays, None, failure)
                except Exception:
                    log.exception("the prediction log failed for a failed request to %s v%d", mv.name, mv.version)
            raise
        try:  # watching is never worth a served request: a failure here is logged, the answer sent
            if mv.drift is not None:
                mv.drift.observe(arrays)
            if stream is not None:
                route = route_of(request.model_version, self.registry.routing.get(mv.name))
                self.logging.offer(stream, request.log_id, route, start, arrays, results)
            shadow = self.registry.shadow_of(mv.name, mv)
            if shadow is not None:  # handed over once this task yields: after the answer is on its way
                loop = asyncio.get_running_loop()
                loop.call_soon(self._shadows.send, shadow, arrays, results, request.log_id)
        except Exception:
            log.exception(
                "drift sampling, the prediction log or the shadow hand-off failed for %s v%d", mv.name, mv.version
            )
        datatypes = mv.instance.output_datatypes
        outputs = [Tensor(name, datatypes[name], results[name]) for name in wanted]
        if ranked:  # Triton's classification extension: these outputs answer as their top classes
            outputs = [t if t.name not in ranked else await as_classes(t, ranked[t.name], mv) for t in outputs]
        mv.stats.success.add(time.monotonic_ns() - start)
        mv.stats.last_inference_ms = int(time.time() * 1000)
        return InferenceResponse(
            model_name=mv.name,
            model_version=str(mv.version),
            outputs=outputs,
            id=request.id,
        )

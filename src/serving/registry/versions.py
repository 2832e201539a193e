"""Every model version the server knows, loaded or not: loading, reloading and unloading them
while the others keep serving, and the version a request gets."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable

from serving.config.model import Platform
from serving.errors import FileReadError, ModelNotFoundError, ModelNotReadyError, ServingError
from serving.lifecycle.routing import ModelRouting
from serving.model_instance import ModelInstance
from serving.pipeline.model import PipelineModel
from serving.registry import choice
from serving.registry.lane import ModelVersion, VersionState
from serving.registry.steps import PipelineRunner, RegistrySteps
from serving.repository import ModelEntry
from serving.runtime import create_model
from serving.telemetry.metrics import READY, Metrics, NullMetrics

log = logging.getLogger(__name__)

LISTED = 20
"""How many served model names an unknown-model error lists."""


class ModelRegistry:
    """Every model version the server knows, loaded or not, and how requests pick one."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics: Metrics = metrics or NullMetrics()
        self._models: dict[str, dict[int, ModelVersion]] = {}
        self._newest_first: dict[str, tuple[ModelVersion, ...]] = {}  # read on every request
        self._entries: dict[str, ModelEntry] = {}
        self.routing: dict[str, ModelRouting] = {}
        """Operator-set routing per model (``lifecycle``); a model without one routes to its newest ready version."""
        self._rng = random.Random()

    def new_version(self, entry: ModelEntry, version: int) -> ModelVersion:
        """A version of ``entry``, not loaded yet."""
        directory = entry.version_dir(version)
        if entry.config.platform is Platform.PIPELINE:
            model = PipelineModel(entry.name, entry.config)
            mv = ModelVersion(ModelInstance(entry.name, version, entry.config, model), metrics=self.metrics)
            mv.directory = directory
            mv.pipeline = PipelineRunner(model, RegistrySteps(self), self.metrics, mv.labels)
            return mv
        return ModelVersion(
            ModelInstance(entry.name, version, entry.config, create_model(entry.config, directory)),
            metrics=self.metrics,
            make_model=functools.partial(create_model, entry.config, directory),
            directory=directory,
        )

    def load_entries(self, entries: list[ModelEntry]) -> None:
        """Load the selected versions of each entry (pipelines last: their steps must be served);
        a failure marks only that version."""
        for entry in sorted(entries, key=lambda e: e.config.platform is Platform.PIPELINE):
            self._entries[entry.name] = entry
            for v in entry.selected:
                mv = self.new_version(entry, v)
                try:
                    mv.load()
                    log.info(
                        "model %s version %d ready in %.2fs on %s",
                        entry.name,
                        v,
                        mv.load_seconds,
                        mv.instance.model.device,
                    )
                except Exception as exc:  # one version's failure, whatever it is, never stops the others
                    self._failed(mv, exc)
                self.put(mv)

    async def load_version(self, entry: ModelEntry, version: int) -> ModelVersion:
        """Load (or reload) one version while the others keep serving: the slow part on a worker
        thread; it is served only once warm. A failure leaves the version UNAVAILABLE with the
        reason, and a version already serving under that number keeps serving."""
        self._entries[entry.name] = entry
        mv = self.new_version(entry, version)
        start = time.monotonic()
        try:
            await asyncio.to_thread(mv.open)
            mv.start(time.monotonic() - start)
        except Exception as exc:  # ServingError, or an OSError from a runtime reading the artifact
            self._failed(mv, exc)
            old = self._models.get(entry.name, {}).get(version)
            if old is None or old.state is not VersionState.READY:
                self.put(mv)
            else:
                mv.instance.unload()  # the serving instance stays; what the failed one opened is released now
            return mv
        old = self._models.get(entry.name, {}).get(version)
        self.put(mv)
        log.info("model %s version %d loaded in %.2fs", entry.name, version, mv.load_seconds)
        if old is not None:
            await self._retire(old, report=False)
        return mv

    async def unload_version(self, name: str, version: int, drain_s: float = 30.0) -> None:
        """Stop serving one version: no new request is routed to it, those it holds are answered,
        then it is closed. It stays in the index as UNAVAILABLE ("unloaded")."""
        mv = self._models.get(name, {}).get(version)
        if mv is None or mv.reason == "unloaded":
            return
        placeholder = ModelVersion(mv.instance, VersionState.UNAVAILABLE, "unloaded", metrics=self.metrics)
        self.put(placeholder)
        await self._retire(mv, drain_s)
        self.metrics.forget(name, str(version))
        log.info("model %s version %d unloaded", name, version)

    async def _retire(self, mv: ModelVersion, drain_s: float = 30.0, report: bool = True) -> None:
        await mv.drain(drain_s)
        await mv.close(report)

    def _failed(self, mv: ModelVersion, exc: Exception) -> None:
        """Mark a version that could not be loaded: unavailable, with the reason (no traceback
        for our own errors; an unexpected one's goes to the log)."""
        if isinstance(exc, ServingError):
            reason = exc.message
        elif isinstance(exc, OSError):
            reason = f"cannot read {exc.filename or 'a file'}: {exc.strerror or exc}"
        else:
            reason = f"unexpected error while loading: {type(exc).__name__}: {exc}"
        mv.state, mv.reason = VersionState.UNAVAILABLE, reason
        mv.retry = (
            isinstance(exc, FileReadError)
            or not isinstance(exc, ServingError)  # OSError included
            or (
                mv.pipeline is not None and isinstance(exc, ModelNotFoundError | ModelNotReadyError)
            )  # a step not served yet
        )
        self.metrics.set(READY, mv.labels, 0)
        log.error(
            "model %s version %d failed to load: %s%s",
            mv.name,
            mv.version,
            reason,
            " (tried again later)" if mv.retry else "",
            exc_info=None if isinstance(exc, ServingError | OSError) else exc,
        )

    def put(self, mv: ModelVersion) -> None:
        versions = self._models.setdefault(mv.name, {})
        versions[mv.version] = mv
        self._newest_first[mv.name] = tuple(versions[v] for v in sorted(versions, reverse=True))

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> tuple[ModelVersion, ...]:
        """All known versions of a model, newest first.

        Raises:
            ModelNotFoundError: unknown model.
        """
        try:
            return self._newest_first[name]
        except KeyError:
            raise ModelNotFoundError(f"unknown model {name[:64]!r}; served: {self._served()}") from None

    def get(self, name: str, version: str = "", header: Callable[[str], str | None] | None = None) -> ModelVersion:
        """The version a request gets (:func:`serving.registry.choice.pick`).

        Raises:
            ModelNotFoundError: unknown model, version or alias.
            ModelNotReadyError: the version exists but is not ready.
        """
        return choice.pick(name, self.versions(name), self.routing.get(name), version, header, self._rng)

    def shadow_of(self, name: str, primary: ModelVersion) -> ModelVersion | None:
        """The ready shadow version of a model, unless it is the one that answered."""
        return choice.shadow(self.routing.get(name), self._models.get(name, {}), primary)

    def _served(self) -> str:
        """The model names, as an unknown-model error lists them (at most ``LISTED``)."""
        names = self.names()
        shown = ", ".join(repr(n) for n in names[:LISTED]) or "none"
        return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")

    def all_versions(self) -> list[ModelVersion]:
        return [mv for name in self.names() for mv in self.versions(name)]

    def entry(self, name: str) -> ModelEntry:
        self.versions(name)
        return self._entries[name]

    def entries(self) -> dict[str, ModelEntry]:
        return dict(self._entries)

    async def close(self) -> None:
        for mv in self.all_versions():
            await mv.close()

"""Once a second, each watched version's drift (PSI per feature, over the window its requests
filled) exported as gauges; the rows are sampled on the request path by ``LocalInferenceService``."""

from __future__ import annotations

import asyncio
import logging

from serving.registry.lane import VersionState
from serving.registry.versions import ModelRegistry
from serving.telemetry.metrics import DRIFT_PSI, DRIFT_ROWS

log = logging.getLogger(__name__)

DRIFT_TICK_S = 1.0


class DriftWatch:
    """The task that turns each watched version's window into ``serving_drift_*`` gauges."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the watch on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())
            self._task.add_done_callback(_report_death)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
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


def _report_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the drift watch died: PSI gauges stop updating", exc_info=task.exception())

"""Once a second, each watched version's drift (PSI per feature, over the window its requests
filled) exported as gauges; the rows are sampled on the request path by ``LocalInferenceService``."""

from __future__ import annotations

import asyncio
import logging

from serving.background import BackgroundTask
from serving.registry.lane import VersionState
from serving.registry.versions import ModelRegistry
from serving.telemetry.metrics import DRIFT_PSI, DRIFT_ROWS

log = logging.getLogger(__name__)

DRIFT_TICK_S = 1.0


class DriftWatch:
    """The task that turns each watched version's window into ``serving_drift_*`` gauges."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._task = BackgroundTask(self._watch, "the drift watch: PSI gauges stop updating")

    def start(self) -> None:
        """Start the watch on the running loop (once)."""
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

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

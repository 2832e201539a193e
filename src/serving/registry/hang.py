"""A version whose batch ran past ``execution_timeout_s`` is reloaded: its lane is closed, the
thread stuck in the model abandoned, and a fresh instance of the model is opened and warmed on a
new thread before the version serves again."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from serving.errors import ModelNotReadyError
from serving.model_instance import ModelInstance

if TYPE_CHECKING:
    from serving.registry.lane import ModelVersion

log = logging.getLogger(__name__)


class HangRecovery:
    """Reloads one version after a hang, one reload at a time."""

    def __init__(self, mv: ModelVersion) -> None:
        self.mv = mv
        self._reloading: asyncio.Task[None] | None = None

    def reload(self) -> None:
        """Start a reload on the running loop, unless one is under way."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.get_running_loop().create_task(self._reload())
            self._reloading.add_done_callback(self._reload_ended)

    def cancel(self) -> None:
        """The version closes: a reload under way stops."""
        if self._reloading is not None and not self._reloading.done():
            self._reloading.cancel()

    async def _reload(self) -> None:
        mv = self.mv
        await mv.abandon_lane()
        if mv.make_model is None:
            raise ModelNotReadyError("no way to make a fresh instance of this model")
        fresh = ModelInstance(mv.name, mv.version, mv.config, mv.make_model())
        await asyncio.to_thread(fresh.open)
        mv.serve(fresh)
        log.info("model %s version %d reloaded after a hang", mv.name, mv.version)

    def _reload_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.mv.reason = f"reload after a hang failed: {exc}"
            log.error("model %s version %d could not be reloaded: %r", self.mv.name, self.mv.version, exc)

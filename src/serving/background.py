"""A task that runs beside the requests for the life of a server (a watch, a sampler): started on
the running loop, its death logged with what stops working, and stopped by cancelling and
awaiting it, so that every started task is settled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class BackgroundTask:
    def __init__(self, run: Callable[[], Coroutine[Any, Any, None]], on_death: str) -> None:
        """``run`` makes the coroutine; ``on_death`` says what stops working if it dies."""
        self._run = run
        self._on_death = on_death
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start it on the running loop (once)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("a background task died: %s", self._on_death, exc_info=task.exception())

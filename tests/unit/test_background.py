from __future__ import annotations

import asyncio
import logging

import pytest

from serving.background import BackgroundTask


async def test_a_background_task_is_settled_on_stop_and_its_death_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = BackgroundTask(tick, "ticks stop")
    task.start()
    task.start()  # once
    await asyncio.sleep(0.05)
    await task.stop()
    seen = ticks
    await asyncio.sleep(0.03)
    assert seen > 0 and ticks == seen  # stopped, not left running

    async def dies() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.CRITICAL, logger="serving.background"):
        dying = BackgroundTask(dies, "the gauges stop updating")
        dying.start()
        await asyncio.sleep(0.01)
        await dying.stop()
    assert any("the gauges stop updating" in r.message and r.exc_info for r in caplog.records)

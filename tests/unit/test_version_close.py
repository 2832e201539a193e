"""Closing a version (an unload, a reload, shutdown) never blocks the event loop on its worker
thread, even when that thread is stuck in a model that cannot be interrupted."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from serving.config.model import ModelConfig
from serving.errors import ModelNotReadyError
from serving.model_instance import ModelInstance
from serving.registry.lane import ModelVersion, VersionState
from serving.types import TensorSpec

Arrays = dict[str, np.ndarray[Any, Any]]


class StuckModel:
    """A model whose executions block until ``release`` is set (a hang no runtime can interrupt)."""

    platform = "python"
    device = "cpu"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.unloaded = False

    def load(self) -> None:
        pass

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        self.entered.set()
        self.release.wait(30)
        return {"y": inputs["x"]}

    def unload(self) -> None:
        self.unloaded = True

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return (TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("y", "FP32", (-1, 4)),)


def stuck_version(model: StuckModel) -> ModelVersion:
    config = ModelConfig.model_validate(
        {"platform": "onnx", "max_batch_size": 4, "instance": {"warmup": False, "execution_timeout_s": None}}
    )
    mv = ModelVersion(ModelInstance("stuck", 1, config, model))
    mv.load()
    return mv


async def test_closing_a_version_whose_worker_is_stuck_never_blocks_the_loop() -> None:
    model = StuckModel()
    mv = stuck_version(model)
    request = asyncio.ensure_future(mv.batcher.submit({"x": np.zeros((1, 4), np.float32)}))  # type: ignore[union-attr]
    await asyncio.to_thread(model.entered.wait, 10)
    releaser = threading.Timer(2.0, model.release.set)  # the stuck thread ends by itself after 2 s
    releaser.start()
    try:
        closing = asyncio.ensure_future(mv.close())
        ticks = 0
        while not closing.done():  # the loop keeps running while the version closes
            await asyncio.sleep(0.01)
            ticks += 1
            if ticks == 20:
                break
        assert ticks == 20 and not closing.done()
        with pytest.raises(ModelNotReadyError, match="unloaded"):
            await request  # answered at once, not after the stuck execution
        await closing
        assert mv.state is VersionState.UNAVAILABLE and model.unloaded  # freed once the thread let go
    finally:
        releaser.cancel()
        model.release.set()


class PairedModel(StuckModel):
    """Each execution waits at a barrier for a second one running at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = threading.Barrier(2)
        self.threads: set[int] = set()

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        self.threads.add(threading.get_ident())
        self.entered.set()
        self.pair.wait(10)  # broken (and the batch failed) unless two executions overlap
        return {"y": inputs["x"] * 2}


def version_of(model: StuckModel, count: int) -> ModelVersion:
    config = ModelConfig.model_validate(
        {
            "platform": "onnx",
            "max_batch_size": 4,
            "dynamic_batching": {"max_queue_delay_ms": 0},
            "instance": {"warmup": False, "execution_timeout_s": None, "count": count},
        }
    )
    mv = ModelVersion(ModelInstance("paired", 1, config, model))
    mv.load()
    return mv


async def test_instance_count_runs_that_many_batches_at_once_on_their_own_threads() -> None:
    model = PairedModel()
    mv = version_of(model, count=2)
    assert mv.batcher is not None
    first = asyncio.ensure_future(mv.batcher.submit({"x": np.ones((1, 4), np.float32)}))
    await asyncio.to_thread(model.entered.wait, 10)  # the first batch waits at the barrier for a second
    second = mv.batcher.submit({"x": np.full((2, 4), 3.0, np.float32)})
    a, b = await asyncio.wait_for(asyncio.gather(first, second), 10)
    assert a["y"].tolist() == [[2.0] * 4] and b["y"].tolist() == [[6.0] * 4] * 2
    assert len(model.threads) == 2
    await mv.close()
    assert model.unloaded


async def test_closing_a_version_waits_for_every_worker_thread() -> None:
    """Two threads, one stuck in the model until released: the version is unloaded only after
    both are free, and the event loop runs meanwhile."""
    model = StuckModel()
    mv = version_of(model, count=2)
    assert mv.batcher is not None
    request = asyncio.ensure_future(mv.batcher.submit({"x": np.zeros((1, 4), np.float32)}))
    await asyncio.to_thread(model.entered.wait, 10)
    releaser = threading.Timer(1.0, model.release.set)
    releaser.start()
    try:
        closing = asyncio.ensure_future(mv.close())
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not closing.done() and not model.unloaded  # one thread is still in the model
        with pytest.raises(ModelNotReadyError, match="unloaded"):
            await request
        await asyncio.wait_for(closing, 10)
        assert model.unloaded
    finally:
        releaser.cancel()
        model.release.set()

"""A model execution that runs past ``instance.execution_timeout_s`` (a real onnxruntime model on
a request far bigger than the bound allows): its request fails with a clear 503, the version is
marked unavailable and reloaded (a fresh instance on a fresh thread), the other models keep
serving, and the reloaded version serves again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving.errors import ModelNotReadyError
from serving.registry.lane import VersionState
from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, Tensor

from models import add_model, slow_model, spin_model


def request(model: str, rows: int, width: int) -> InferenceRequest:
    return InferenceRequest(model, [Tensor("x", "FP32", np.full((rows, width), 0.01, np.float32))])


async def test_a_hung_execution_fails_clearly_and_the_version_is_reloaded(tmp_path: Path) -> None:
    slow_model(tmp_path, "slow", size=512, repeats=40, max_batch_size=4096, max_queue_size=8)
    doc = yaml.safe_load((tmp_path / "slow" / "model.yaml").read_text())
    doc["instance"] = {"execution_timeout_s": 0.05, "warmup": False, "num_threads": 1}
    (tmp_path / "slow" / "model.yaml").write_text(yaml.safe_dump(doc))
    add_model(tmp_path, "add", versions=(1,))
    service = LocalInferenceService.from_repository(tmp_path)
    try:
        small = await service.infer(request("slow", 1, 512))  # well within the bound
        assert small.outputs[0].data.shape == (1, 512)
        with pytest.raises(ModelNotReadyError, match="execution_timeout_s=0.05"):
            await service.infer(request("slow", 4096, 512))  # ~43 G multiply-adds
        (mv,) = service.registry.versions("slow")
        assert mv.reason.startswith("an execution exceeded") or mv.state is VersionState.READY
        # The other model keeps serving while the version reloads.
        added = await service.infer(InferenceRequest("add", [Tensor("x", "FP32", np.ones((1, 4), np.float32))]))
        np.testing.assert_array_equal(added.outputs[0].data, np.full((1, 4), 2.0))
        for _ in range(200):
            if mv.state is VersionState.READY:
                break
            with pytest.raises(ModelNotReadyError):
                await service.infer(request("slow", 1, 512))
            await asyncio.sleep(0.05)
        assert mv.state is VersionState.READY, mv.reason
        again = await service.infer(request("slow", 1, 512))
        np.testing.assert_array_equal(again.outputs[0].data, small.outputs[0].data)
    finally:
        await service.close()


def spin_request(spins: int) -> InferenceRequest:
    return InferenceRequest(
        "spin",
        [
            Tensor("x", "FP32", np.zeros((1, 4), np.float32)),
            Tensor("spins", "INT64", np.array([[spins]], np.int64)),
        ],
    )


async def test_a_hang_after_fast_batches_on_default_settings_never_freezes_the_replica(tmp_path: Path) -> None:
    """Fast batches of the default settings run inline on the event loop; a hang there (a real
    onnxruntime Loop of ~10 s, in C++) must still be stopped at execution_timeout_s, answered
    503, and the version reloaded, while another model is served during the hang."""
    spin_model(tmp_path, instance={"execution_timeout_s": 0.5})  # everything else as a user gets it
    add_model(tmp_path, "add", versions=(1,))
    service = LocalInferenceService.from_repository(tmp_path)
    try:
        for _ in range(20):  # fast executions: what makes the batcher run batches inline
            fast = await service.infer(spin_request(3))
            np.testing.assert_array_equal(fast.outputs[0].data, np.full((1, 4), 3.0))
        hang = asyncio.ensure_future(service.infer(spin_request(10_000_000)))
        await asyncio.sleep(0.05)
        added = await service.infer(InferenceRequest("add", [Tensor("x", "FP32", np.ones((1, 4), np.float32))]))
        np.testing.assert_array_equal(added.outputs[0].data, np.full((1, 4), 2.0))
        assert not hang.done()  # the other model was answered while the hang went on
        with pytest.raises(ModelNotReadyError, match="execution_timeout_s=0.5"):
            await hang
        (mv,) = service.registry.versions("spin")
        for _ in range(200):
            if mv.state is VersionState.READY:
                break
            await asyncio.sleep(0.05)
        assert mv.state is VersionState.READY, mv.reason
        again = await service.infer(spin_request(2))
        np.testing.assert_array_equal(again.outputs[0].data, np.full((1, 4), 2.0))
    finally:
        await service.close()

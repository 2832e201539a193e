from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.config.model import ModelConfig
from serving.errors import ModelNotFoundError, ModelNotReadyError
from serving.model_instance import ModelInstance
from serving.registry.lane import ModelVersion, VersionState
from serving.registry.versions import ModelRegistry
from serving.repository import scan_repository
from serving.service.local import LocalInferenceService
from serving.types import TensorSpec

from models import add_model


class RecordingModel:
    """A runtime stand-in that records the batches it is given (the registry is under test)."""

    platform = "test"
    device = "cpu"

    def __init__(self) -> None:
        self.calls: list[dict[str, tuple[int, ...]]] = []

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return (), ()

    def predict(self, inputs: dict[str, np.ndarray[Any, Any]], outputs: list[str]) -> dict[str, np.ndarray[Any, Any]]:
        self.calls.append({k: v.shape for k, v in inputs.items()})
        rows = next(iter(inputs.values())).shape[0]
        return {name: np.zeros((rows, 2), np.float32) for name in outputs}


def config(**extra: Any) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "platform": "onnx",
            "max_batch_size": 8,
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "s", "datatype": "BYTES", "shape": [1]},
            ],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
            **extra,
        }
    )


def test_warm_up_runs_batch_sizes_1_and_max_without_counting_them() -> None:
    model = RecordingModel()
    mv = ModelVersion(ModelInstance("m", 1, config(), model))
    mv.load()
    assert model.calls == [{"x": (1, 1, 3), "s": (1, 1)}, {"x": (8, 1, 3), "s": (8, 1)}]
    assert mv.stats.inference_count == 0 and mv.stats.execution_count == 0
    assert mv.state is VersionState.READY


def test_warm_up_can_be_turned_off() -> None:
    model = RecordingModel()
    ModelVersion(ModelInstance("m", 1, config(instance={"warmup": False}), model)).load()
    assert model.calls == []


def test_a_version_that_fails_to_load_is_unavailable_not_fatal(tmp_path: Path) -> None:
    add_model(tmp_path, versions=(1, 2), version_policy={"all": True})
    (tmp_path / "add" / "2" / "model.onnx").write_bytes(b"not an onnx file")
    registry = ModelRegistry()
    registry.load_entries(scan_repository(tmp_path))
    broken = registry.versions("add")[0]
    assert (broken.version, broken.state) == (2, VersionState.UNAVAILABLE)
    assert "cannot load" in broken.reason
    assert registry.get("add").version == 1  # newest *ready* version
    with pytest.raises(ModelNotReadyError, match="not ready"):
        registry.get("add", "2")
    with pytest.raises(ModelNotFoundError):
        registry.get("add", "3")
    service = LocalInferenceService(registry)
    assert not service.model_ready("add", "2")
    assert service.model_ready("add", "1")
    assert service.ready()  # every model has a ready version
    assert [r.state for r in service.repository_index()] == ["UNAVAILABLE", "READY"]
    assert [r.version for r in service.repository_index(ready_only=True)] == ["1"]


def test_an_unknown_model_error_lists_the_served_names_up_to_a_bound() -> None:
    registry = ModelRegistry()
    names = [f"m{i:02d}" for i in range(25)]
    for name in names:
        registry.put(ModelVersion(ModelInstance(name, 1, config(), RecordingModel()), VersionState.UNAVAILABLE))
    with pytest.raises(ModelNotFoundError) as info:
        registry.get("digit")
    listed, rest = info.value.message.split("; served: ")[1].rsplit(" and ", 1)
    assert listed.split(", ") == [repr(n) for n in names[:20]]
    assert rest == "5 more"
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'digit'; served: none"):
        ModelRegistry().get("digit")

"""``instance.count`` above 1 calls a runtime's ``predict`` from several threads at once: each
runtime it is documented for gives the answers it gives one call at a time (real models, real
threads)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.config.model import load_model_config
from serving.demo import build_digits, build_digits_torch
from serving.runtime import create_model

from models import iris, tabular_models

Array = np.ndarray[Any, Any]
THREADS = 4
CALLS = 40


def batches(features: int, dtype: Any, source: Array | None = None) -> list[Array]:
    rng = np.random.default_rng(0)
    if source is not None:
        return [source[rng.integers(0, len(source), int(rng.integers(1, 17)))].astype(dtype) for _ in range(CALLS)]
    return [rng.random((int(rng.integers(1, 17)), features)).astype(dtype) * 16 for _ in range(CALLS)]


def build(root: Path, name: str) -> None:
    if name in ("digits", "digits_torch"):
        (build_digits if name == "digits" else build_digits_torch)(root)
    else:
        tabular_models(root)


@pytest.mark.parametrize("name", ["digits", "digits_torch", "iris_forest", "iris_xgb", "iris_lgbm"])
def test_concurrent_predictions_equal_one_at_a_time(tmp_path: Path, name: str) -> None:
    build(tmp_path, name)
    config = load_model_config(tmp_path / name / "model.yaml")
    model = create_model(config, tmp_path / name / "1")
    model.load()
    if name.startswith("iris"):
        input_name, outputs, data = "input", ["probabilities"], batches(4, np.float64, iris()[0])
    else:
        spec = config.inputs[0] if config.inputs else None
        input_name = spec.name if spec else "input"
        outputs = [t.name for t in config.outputs or ()] or ["probabilities"]
        data = batches(64, np.float32)
    expected = [model.predict({input_name: x}, outputs) for x in data]
    assert all(set(want) == set(outputs) for want in expected)
    answers: dict[int, list[dict[str, Array]]] = {}
    start = threading.Barrier(THREADS)

    def call(k: int) -> None:
        start.wait(10)
        order = list(range(CALLS)) if k % 2 == 0 else list(reversed(range(CALLS)))
        got = {i: model.predict({input_name: data[i]}, outputs) for i in order}
        answers[k] = [got[i] for i in range(CALLS)]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == THREADS
    for got in answers.values():
        for one, want in zip(got, expected):
            for key in want:
                np.testing.assert_array_equal(one[key], want[key])
    model.unload()

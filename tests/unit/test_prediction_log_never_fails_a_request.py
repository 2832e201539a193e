"""The prediction log never costs a request its answer: a failure of the hand-over is logged, and
the request gets the answer it would have had without a log (its result, or its own error)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.config.prediction_log import PredictionLogConfig
from serving.errors import InvalidInputError
from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, Tensor

from models import add_model


async def test_a_failing_hand_over_leaves_answers_and_errors_as_they_are(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_model(tmp_path, "add", versions=(1,))
    service = LocalInferenceService.from_repository(
        tmp_path, prediction_log=PredictionLogConfig(destination=str(tmp_path / "log"))
    )

    def failing(*args: Any) -> None:
        raise RuntimeError("the log broke")

    service.logging.offer = failing
    try:
        answer = await service.infer(InferenceRequest("add", [Tensor("x", "FP32", np.ones((1, 4), np.float32))]))
        np.testing.assert_array_equal(answer.outputs[0].data, np.full((1, 4), 2.0))
        with pytest.raises(InvalidInputError):  # its own error, not the log's
            await service.infer(InferenceRequest("add", [Tensor("x", "FP32", np.ones((1, 5), np.float32))]))
    finally:
        await service.close()
    assert sum("the log broke" in r.getMessage() or "the log broke" in str(r.exc_info) for r in caplog.records) == 2

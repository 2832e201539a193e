"""digits_label: a digit classifier's probabilities to its answer as text and that answer's probability."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving import ModelContext

Array = np.ndarray[Any, Any]


class Model:
    def __init__(self, context: ModelContext) -> None:
        labels = context.config.labels or tuple(str(i) for i in range(10))
        self.labels = np.array([label.encode() for label in labels], dtype=np.object_)

    def predict(self, inputs: dict[str, Array]) -> dict[str, Array]:
        probabilities = inputs["probabilities"]
        best = np.argmax(probabilities, axis=1)
        return {
            "label": self.labels[best].reshape(-1, 1),
            "probability": probabilities[np.arange(len(best)), best].reshape(-1, 1),
        }

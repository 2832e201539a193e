"""The ``Model`` protocol every runtime implements."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from serving.types import TensorSpec

Arrays = dict[str, np.ndarray[Any, Any]]


class Model(Protocol):
    """A loaded model artifact that runs batches of numpy inputs.

    Shapes in :meth:`signature` are the model's own, batch dimension included
    (``-1`` for a dynamic dimension).
    """

    platform: str
    device: str

    def load(self) -> None:
        """Load the artifact; raises ``ModelNotReadyError`` when it cannot."""

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        """Run one batch; raises ``ModelExecutionError`` when the framework fails."""

    def unload(self) -> None:
        """Release the session and any device memory."""

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Inputs and outputs as the artifact declares them (empty if it cannot tell)."""

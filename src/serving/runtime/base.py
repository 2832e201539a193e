"""The ``Model`` protocol every runtime implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class Interruptible(Protocol):
    """A runtime that can stop an execution in progress from another thread: a hung batch frees
    its worker thread, and a batch run inline on the event loop can be cut short (and re-run on
    the worker) before it holds the loop for long."""

    def interrupt(self) -> None:
        """Make the execution in progress, if any, fail soon; later executions are not affected."""

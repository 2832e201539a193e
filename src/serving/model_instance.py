"""One instance of a model version (Triton's word): the artifact in its runtime, the I/O contract
resolved against model.yaml, and warm-up. It is made before it is opened; :meth:`ModelInstance.open`
loads it.

What online serving (``registry``, which adds a batcher, state and statistics) and offline
scoring (``offline.scorer``) share.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.codecs import numpy_dtype
from serving.config.model import ModelConfig, Platform, TensorConfig
from serving.errors import ConfigError, ServingError
from serving.runtime import Model
from serving.runtime.base import Interruptible
from serving.types import TensorSpec

log = logging.getLogger(__name__)

WARMUP_MAX_ROWS = 1024


@dataclass
class ModelInstance:
    """One instance of a version's model: call :meth:`open` once, :meth:`predict`, then :meth:`unload`."""

    name: str
    version: int
    config: ModelConfig
    model: Model
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    output_datatypes: dict[str, str] = field(default_factory=dict)
    output_specs: dict[str, TensorSpec] = field(default_factory=dict)

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    def wire_shape(self, spec: TensorSpec) -> list[int]:
        """The shape clients see: a leading -1 batch dimension when batching."""
        return ([-1] if self.max_batch_size else []) + list(spec.shape)

    @property
    def interrupt(self) -> Callable[[], None] | None:
        """How to stop an execution in progress from another thread, where the runtime can."""
        return self.model.interrupt if isinstance(self.model, Interruptible) else None

    def open(self) -> None:
        """Load the artifact, resolve the I/O contract and warm up.

        Raises:
            ModelNotReadyError, ConfigError: the artifact cannot be loaded or contradicts model.yaml.
        """
        self.model.load()
        self.inputs, self.outputs = _resolve_io(self)
        self.output_datatypes = {o.name: o.datatype for o in self.outputs}
        self.output_specs = {o.name: o for o in self.outputs}
        if self.config.instance.warmup and self.config.platform is not Platform.PIPELINE:
            self.warm_up()  # a pipeline's steps are warmed up as models of their own

    def predict(self, arrays: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        """Every declared output for one batch, as its declared datatype (a model.yaml may declare
        FP32 for a model that computes FP64): online and offline answer with the same dtypes."""
        outputs = self.model.predict(arrays, list(self.output_datatypes))
        for name, datatype in self.output_datatypes.items():
            arr = outputs[name]
            if datatype != "BYTES" and arr.dtype != (dtype := numpy_dtype(datatype)):
                outputs[name] = arr.astype(dtype)
        return outputs

    def warm_up(self) -> None:
        """Run zero-filled batches at batch sizes 1 and max_batch_size (at most WARMUP_MAX_ROWS;
        variable dims = 1), so the first user request does not pay for kernel selection,
        allocation or CUDA init. A model that rejects the synthetic input only logs: its real
        inputs may need other sizes."""
        configured = self.config.instance.warmup_batch_sizes
        if not self.max_batch_size:
            sizes = [0]
        elif configured:
            sizes = sorted({min(b, self.max_batch_size) for b in configured})
        else:
            sizes = sorted({1, min(self.max_batch_size, WARMUP_MAX_ROWS)})
        for rows in sizes:
            arrays = {s.name: _zeros(s, rows) for s in self.inputs}
            try:
                self.predict(arrays)
            except Exception as exc:  # a python model may refuse zeros (an empty image) in its own way
                message = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
                log.warning("warm-up of %s v%d at batch %d failed: %s", self.name, self.version, rows, message)
                return

    def unload(self) -> None:
        self.model.unload()


def _zeros(spec: TensorSpec, rows: int) -> np.ndarray[Any, Any]:
    shape = ([rows] if rows else []) + [d if d > 0 else 1 for d in spec.shape]
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=np.object_)
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))


def _resolve_io(mv: ModelInstance) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Declared I/O wins; ONNX models may leave it out (read from the model, minus the batch dim)."""
    declared_in, declared_out = mv.config.inputs, mv.config.outputs
    model_in, model_out = mv.model.signature()

    def from_model(specs: tuple[TensorSpec, ...], what: str) -> tuple[TensorSpec, ...]:
        out = []
        for s in specs:
            shape = s.shape
            if mv.max_batch_size:
                if not shape or shape[0] not in (-1,):
                    raise ConfigError(
                        f"model {mv.name}: {what} {s.name!r} has shape {list(shape)}; with max_batch_size > 0 "
                        "its first dimension must be dynamic (the batch)"
                    )
                shape = shape[1:]
            out.append(TensorSpec(s.name, s.datatype, shape))
        return tuple(out)

    def from_config(ts: tuple[TensorConfig, ...]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.datatype, t.shape) for t in ts)

    inputs = from_config(declared_in) if declared_in else from_model(model_in, "input")
    outputs = from_config(declared_out) if declared_out else from_model(model_out, "output")
    if model_in:
        known = {s.name for s in model_in}
        unknown = [s.name for s in inputs if s.name not in known]
        if unknown:
            raise ConfigError(f"model {mv.name}: model.yaml declares inputs {unknown} the model does not have")
    if model_out:
        known = {s.name for s in model_out}
        unknown = [s.name for s in outputs if s.name not in known]
        if unknown:
            raise ConfigError(f"model {mv.name}: model.yaml declares outputs {unknown} the model does not have")
    return inputs, outputs

"""``platform: python``: a version folder's ``model.py`` defines a class (``Model`` unless
model.yaml's ``python.class`` names another), built once per load with a :class:`ModelContext`;
its ``predict(inputs) -> outputs`` runs on whole dynamic batches of numpy arrays, and ``close()``
(optional) runs at unload.

Each load imports ``model.py`` afresh under a module name of its own, so two versions whose
files define the same module and class names live side by side, and a reload of changed files
runs the new code. The outputs are checked against model.yaml after every call: a wrong name,
datatype, shape or row count is the model's bug, answered 500 with a message that names
``model.py`` and the output (:class:`~serving.errors.ModelOutputError`).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from serving.codecs import numpy_dtype
from serving.config.model import ModelConfig
from serving.errors import ModelExecutionError, ModelNotReadyError, ModelOutputError, ServingError
from serving.rows import ROW_ERRORS, checked_row_errors
from serving.runtime.base import Arrays
from serving.types import TensorSpec

log = logging.getLogger(__name__)

MODULE_PREFIX = "serving_user_models"
"""User modules are imported as ``serving_user_models.<model>_v<version>_<n>``."""

_loads = itertools.count(1)


@dataclass(frozen=True)
class ModelContext:
    """What a python model's constructor receives."""

    name: str
    """The model's name in the repository."""
    version: int
    directory: Path
    """The version folder (read the files the model needs from here)."""
    config: ModelConfig
    """The model's model.yaml, validated."""
    device: str
    """``cpu`` or ``gpu``: where the model should run (model.yaml's ``instance.device``, ``auto`` resolved)."""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """model.yaml's ``parameters``."""


def resolve_device(wanted: str) -> str:
    """``auto``: ``gpu`` where an NVIDIA driver is present, ``cpu`` otherwise."""
    if wanted != "auto":
        return wanted
    return "gpu" if os.path.exists("/dev/nvidiactl") else "cpu"


class PythonModel:
    """One version's ``model.py`` class instance behind the runtime ``Model`` protocol."""

    platform = "python"

    def __init__(self, path: Path, name: str, version: int, config: ModelConfig) -> None:
        self.path = path
        self.name = name
        self.version = version
        self.config = config
        self.device = resolve_device(config.instance.device)
        self._module: ModuleType | None = None
        self._instance: Any = None
        self._inputs = tuple(TensorSpec(t.name, t.datatype, t.shape) for t in config.inputs or ())
        self._outputs = {t.name: TensorSpec(t.name, t.datatype, t.shape) for t in config.outputs or ()}

    def load(self) -> None:
        """Import model.py under a fresh module name and build its class.

        Raises:
            ModelNotReadyError: the import or the constructor raised, or the class is missing.
        """
        module_name = f"{MODULE_PREFIX}.{_identifier(self.name)}_v{self.version}_{next(_loads)}"
        spec = importlib.util.spec_from_file_location(module_name, self.path)
        if spec is None or spec.loader is None:
            raise ModelNotReadyError(f"{self.path}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses, pickle and typing look modules up here
        try:
            spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(module_name, None)
            if not isinstance(exc, Exception):
                raise
            log.error("%s: import failed", self.path, exc_info=exc)
            raise ModelNotReadyError(f"{self.path}: import failed: {_describe(exc)}") from exc
        class_name = self.config.python.class_name
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type):
            sys.modules.pop(module_name, None)
            raise ModelNotReadyError(f"{self.path}: defines no class {class_name!r} (model.yaml python.class)")
        if not callable(getattr(cls, "predict", None)):
            sys.modules.pop(module_name, None)
            raise ModelNotReadyError(f"{self.path}: class {class_name} has no predict(inputs) method")
        context = ModelContext(
            self.name, self.version, self.path.parent, self.config, self.device, dict(self.config.parameters)
        )
        try:
            self._instance = cls(context)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            log.error("%s: %s(context) raised", self.path, class_name, exc_info=exc)
            raise ModelNotReadyError(f"{self.path}: {class_name}(context) raised {_describe(exc)}") from exc
        self._module = module

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return self._inputs, tuple(self._outputs.values())

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        """Run the user's predict on one batch and check what it returns.

        Raises:
            InvalidInputError: the model refused the request (``serving.InvalidInput``).
            ModelOutputError: outputs that break model.yaml.
            ModelExecutionError: the model raised anything else (answered 500; the traceback is logged).
        """
        if self._instance is None:
            raise ModelNotReadyError(f"{self.path}: model is not loaded")
        try:
            result = self._instance.predict(inputs)
        except ServingError:
            raise
        except Exception as exc:
            log.error("%s: predict raised", self.path, exc_info=exc)
            raise ModelExecutionError(f"{self.path}: predict raised {_describe(exc)}") from exc
        if not isinstance(result, Mapping):
            raise ModelOutputError(f"{self.path}: predict returned {type(result).__name__}, not a dict of arrays")
        batched = self.config.max_batch_size > 0
        rows = next(iter(inputs.values())).shape[0] if batched and inputs else None
        out: Arrays = {}
        for name in outputs:
            if name not in result:
                raise ModelOutputError(
                    f"{self.path}: predict returned no output {name!r} (it returned {sorted(map(str, result))})"
                )
            out[name] = self._checked(name, result[name], rows)
        if ROW_ERRORS in result and rows is not None:
            out[ROW_ERRORS] = checked_row_errors(result[ROW_ERRORS], rows, f"{self.path}")
        return out

    def _checked(self, name: str, value: Any, rows: int | None) -> np.ndarray[Any, Any]:
        spec = self._outputs[name]
        where = f"{self.path}: output {name!r}"
        if spec.datatype == "BYTES":
            arr = _as_bytes_array(value, where)
        else:
            arr = np.asarray(value)
            want = numpy_dtype(spec.datatype)
            if not _same_kind(arr.dtype, want):
                raise ModelOutputError(f"{where} is {arr.dtype}, model.yaml declares {spec.datatype} ({want})")
            if arr.dtype != want:
                arr = arr.astype(want)
        expected = ([rows] if rows is not None else []) + list(spec.shape)
        if arr.ndim != len(expected) or any(d != -1 and d != a for d, a in zip(expected, arr.shape)):
            shown = ["rows" if rows is not None and i == 0 else d for i, d in enumerate(expected)]
            raise ModelOutputError(
                f"{where} has shape {list(arr.shape)}, model.yaml declares {shown}"
                + (f" (rows = {rows}, the batch's)" if rows is not None else "")
            )
        return arr

    def unload(self) -> None:
        instance, self._instance = self._instance, None
        module, self._module = self._module, None
        if instance is not None and callable(close := getattr(instance, "close", None)):
            try:
                close()
            except Exception:
                log.exception("%s: close() raised", self.path)
        if module is not None:
            sys.modules.pop(module.__name__, None)


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _same_kind(got: np.dtype[Any], want: np.dtype[Any]) -> bool:
    """Numbers cast within their kind (float64 -> float32, int64 -> int32); bool stays bool."""
    if got == want:
        return True
    kinds = {"f": "f", "i": "iu", "u": "iu", "b": "b"}
    return got.kind in kinds.get(want.kind, want.kind) and want.kind != "b"


def _as_bytes_array(value: Any, where: str) -> np.ndarray[Any, Any]:
    """BYTES outputs: an array (or list) of bytes or str (encoded as UTF-8)."""
    arr = np.asarray(value, dtype=np.object_) if not isinstance(value, np.ndarray) else value
    if arr.dtype.kind in "SU":
        arr = arr.astype(np.object_)
    if arr.dtype != np.object_:
        raise ModelOutputError(f"{where} is {arr.dtype}, model.yaml declares BYTES (bytes or str per element)")
    out = np.empty(arr.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for i, item in enumerate(arr.reshape(-1)):
        if isinstance(item, bytes):
            flat[i] = item
        elif isinstance(item, str):
            flat[i] = item.encode("utf-8")
        else:
            raise ModelOutputError(f"{where}: element {i} is {type(item).__name__}; BYTES elements are bytes or str")
    return out

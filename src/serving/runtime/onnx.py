"""onnxruntime runtime: the configured GPU providers (TensorRT, CUDA) when present and allowed,
CPU otherwise; optionally through I/O binding."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.config.model import OnnxOptions
from serving.errors import InvalidInputError, ModelExecutionError, ModelNotReadyError
from serving.runtime.base import Arrays
from serving.types import TensorSpec

log = logging.getLogger(__name__)

_ONNX_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def choose_providers(
    want: str, options: OnnxOptions, available: list[str]
) -> tuple[list[str | tuple[str, dict[str, Any]]], list[str]]:
    """(providers for the session, the configured ones this build lacks). CPU always closes the list."""
    if want == "cpu":
        return ["CPUExecutionProvider"], []
    chosen: list[str | tuple[str, dict[str, Any]]] = []
    missing = []
    for name in options.providers:
        full = PROVIDERS[name]
        if full == "CPUExecutionProvider":
            continue
        if full not in available:
            missing.append(full)
            continue
        opts = options.provider_options.get(name)
        chosen.append((full, {k: str(v) if isinstance(v, bool) else v for k, v in opts.items()}) if opts else full)
    chosen.append("CPUExecutionProvider")
    return chosen, missing


def _spec(arg: Any) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, _ONNX_TYPES.get(arg.type, arg.type), dims)


def _to_bytes(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = np.empty(arr.shape, dtype=np.object_)
    flat = out.reshape(-1)
    for i, item in enumerate(arr.reshape(-1)):
        flat[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out


def _to_str(name: str, arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    out = np.empty(arr.shape, dtype=np.object_)
    flat = out.reshape(-1)
    try:
        for i, item in enumerate(arr.reshape(-1)):
            flat[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
    except UnicodeDecodeError:
        raise InvalidInputError(f"input {name!r}: ONNX string tensors take UTF-8 text") from None
    return out


class OnnxModel:
    """One ONNX artifact in an ``onnxruntime.InferenceSession``."""

    platform = "onnxruntime_onnx"

    def __init__(
        self, path: Path, *, device: str = "auto", num_threads: int = 1, options: OnnxOptions | None = None
    ) -> None:
        self.path = path
        self.device = "cpu"
        self.providers: list[str] = []
        self._want = device
        self._threads = num_threads
        self._options = options or OnnxOptions()
        self._session: ort.InferenceSession | None = None
        self._running: set[ort.RunOptions] = set()  # the executions in progress (interrupt stops them)
        self._string_inputs: set[str] = set()
        self._string_outputs: set[str] = set()

    def load(self) -> None:
        available = ort.get_available_providers()
        providers, missing = choose_providers(self._want, self._options, available)
        if missing and self._want == "gpu":
            log.warning("%s: onnxruntime has no %s (available: %s)", self.path, missing, available)
        if self._want == "gpu" and len(providers) == 1:
            raise ModelNotReadyError(
                f"{self.path}: device gpu requested but onnxruntime has no GPU provider ({available})"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # onnxruntime's pool threads spin after each run by default; on a small machine that
        # spinning takes the cores the replica's event loop needs to receive the next requests.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelNotReadyError(f"{self.path}: onnxruntime cannot load the model: {exc}") from exc
        used = self._session.get_providers()
        self.providers = list(used)
        self.device = "gpu" if used and used[0] in GPU_PROVIDERS else "cpu"
        self._string_inputs = {i.name for i in self._session.get_inputs() if i.type == "tensor(string)"}
        self._string_outputs = {o.name for o in self._session.get_outputs() if o.type == "tensor(string)"}
        log.info("loaded %s on %s with providers %s", self.path, self.device, used)

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        s = self._require()
        return tuple(_spec(i) for i in s.get_inputs()), tuple(_spec(o) for o in s.get_outputs())

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        s = self._require()
        feed = {k: (_to_str(k, v) if k in self._string_inputs else v) for k, v in inputs.items()}
        run = ort.RunOptions()  # one per execution (0.6 us): an interrupt stops only those running then
        run.log_severity_level = 4  # a failure is raised and logged by the caller, not printed by onnxruntime
        self._running.add(run)
        try:
            results = self._run_bound(s, outputs, feed, run) if self._options.io_binding else s.run(outputs, feed, run)
        except Exception as exc:
            raise ModelExecutionError(f"onnxruntime failed: {exc}") from exc
        finally:
            self._running.discard(run)
        out: Arrays = {}
        for name, value in zip(outputs, results):
            arr = np.asarray(value)
            if name in self._string_outputs:
                arr = _to_bytes(arr)
            out[name] = arr
        return out

    def _run_bound(self, s: ort.InferenceSession, outputs: list[str], feed: Arrays, run: Any) -> list[Any]:
        """I/O binding: inputs copied to the device once, outputs allocated there and copied back once."""
        binding = s.io_binding()
        device = "cuda" if self.device == "gpu" else "cpu"
        for name, arr in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in outputs:
            binding.bind_output(name, device)
        s.run_with_iobinding(binding, run)
        return list(binding.copy_outputs_to_cpu())

    def interrupt(self) -> None:
        """Stop the executions in progress, if any, from any thread: they fail with onnxruntime's
        "terminate flag" error. Later executions are not affected."""
        for run in list(self._running):
            run.terminate = True

    def unload(self) -> None:
        self._session = None

    def _require(self) -> ort.InferenceSession:
        if self._session is None:
            raise ModelNotReadyError(f"{self.path}: model is not loaded")
        return self._session

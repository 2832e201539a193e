"""TorchScript runtime: CUDA when present and allowed, CPU otherwise."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.config.model import TorchOptions
from serving.errors import ModelExecutionError, ModelNotReadyError
from serving.runtime.base import Arrays
from serving.types import TensorSpec

log = logging.getLogger(__name__)


class TorchScriptModel:
    """A ``torch.jit`` artifact; inputs are passed positionally in declared order."""

    platform = "pytorch_libtorch"

    def __init__(
        self,
        path: Path,
        *,
        input_names: list[str],
        output_names: list[str],
        device: str = "auto",
        num_threads: int = 1,
        options: TorchOptions | None = None,
    ) -> None:
        self.path = path
        self._options = options or TorchOptions()
        self.device = "cpu"
        self._want = device
        self._threads = num_threads
        self._inputs = input_names
        self._outputs = output_names
        self._module: Any = None
        self._torch_device = torch.device("cpu")

    def load(self) -> None:
        cuda = torch.cuda.is_available()
        if self._want == "gpu" and not cuda:
            raise ModelNotReadyError(f"{self.path}: device gpu requested but CUDA is not available")
        self._torch_device = torch.device("cuda" if cuda and self._want != "cpu" else "cpu")
        if self._threads > 0:
            torch.set_num_threads(self._threads)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream in favour of torch.export; it is the
                # format this runtime serves, so its deprecation notice is not actionable here.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location=self._torch_device)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise ModelNotReadyError(f"{self.path}: torch cannot load the model: {exc}") from exc
        module.eval()
        if self._options.fp16:
            module.half()
        self._module = module
        self.device = "gpu" if self._torch_device.type == "cuda" else "cpu"
        log.info("loaded %s on %s%s", self.path, self._torch_device, " (fp16)" if self._options.fp16 else "")

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        return (), ()

    def predict(self, inputs: Arrays, outputs: list[str]) -> Arrays:
        if self._module is None:
            raise ModelNotReadyError(f"{self.path}: model is not loaded")
        if self._threads > 0:
            # Per call, on the calling thread: torch's first parallel region on a new thread runs
            # with OpenMP's default thread count whatever set_num_threads said on another thread
            # (a worker thread's first answer then differed from the rest in the last bits).
            # It also keeps two models with different counts apart on a shared thread. ~0.1 us.
            torch.set_num_threads(self._threads)
        try:
            tensors = [self._to_device(inputs[n]) for n in self._inputs]
            with torch.inference_mode():
                result = self._module(*tensors)
        except Exception as exc:
            raise ModelExecutionError(f"torch failed: {exc}") from exc
        if isinstance(result, torch.Tensor):
            named = {self._outputs[0]: result}
        elif isinstance(result, dict):
            named = result
        else:
            named = dict(zip(self._outputs, result))
        missing = [n for n in outputs if n not in named]
        if missing:
            raise ModelExecutionError(f"model returned no output named {missing}")
        return {n: self._to_host(named[n]) for n in outputs}

    def _to_device(self, arr: np.ndarray[Any, Any]) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self._torch_device.type == "cuda":
            t = t.pin_memory().to(self._torch_device, non_blocking=True) if self._options.pinned_memory else t.cuda()
        if self._options.fp16 and t.is_floating_point():
            t = t.half()
        return t

    def _to_host(self, t: Any) -> np.ndarray[Any, Any]:
        t = t.detach()
        if self._options.fp16 and t.dtype == torch.float16:
            t = t.float()  # the declared output datatype (FP32) holds
        return np.asarray(t.cpu().numpy())

    def unload(self) -> None:
        self._module = None
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

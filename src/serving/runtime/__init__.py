"""Model runtimes, chosen by ``ModelConfig.platform``."""

from __future__ import annotations

from pathlib import Path

from serving.config.model import TABULAR, ModelConfig, Platform
from serving.runtime.base import Arrays, Model

__all__ = ["RUNTIME_MODULES", "Arrays", "Model", "create_model"]

# The module that implements each platform (and imports its framework).
RUNTIME_MODULES = {
    Platform.ONNX: "serving.runtime.onnx",
    Platform.TORCHSCRIPT: "serving.runtime.torchscript",
    Platform.PYTHON: "serving.runtime.python",
    Platform.SKLEARN: "serving.runtime.tabular",
    Platform.XGBOOST: "serving.runtime.tabular",
    Platform.LIGHTGBM: "serving.runtime.tabular",
}


def create_model(config: ModelConfig, version_dir: Path, name: str = "", version: int = 0) -> Model:
    """Instantiate (not load) the runtime for one version folder (not a pipeline's: its steps
    are other models, put together by ``serving.pipeline``).

    Imports the framework lazily, so a server with only ONNX models never imports torch.
    """
    path = config.platform.artifact_in(version_dir) or version_dir / config.platform.artifact
    if config.platform is Platform.PYTHON:
        from serving.runtime.python import PythonModel

        return PythonModel(path, name or version_dir.parent.name, version or int(version_dir.name), config)
    if config.platform in TABULAR and path.suffix != ".onnx":  # a converted version is ONNX
        from serving.runtime.tabular import TabularModel

        return TabularModel(path, config)
    if config.platform is Platform.PIPELINE:
        raise ValueError("a pipeline has no runtime of its own")
    if config.platform is Platform.ONNX or path.suffix == ".onnx":
        from serving.runtime.onnx import OnnxModel

        return OnnxModel(
            path, device=config.instance.device, num_threads=config.instance.num_threads, options=config.instance.onnx
        )
    from serving.runtime.torchscript import TorchScriptModel

    return TorchScriptModel(
        path,
        input_names=[t.name for t in config.inputs or ()],
        output_names=[t.name for t in config.outputs or ()],
        device=config.instance.device,
        num_threads=config.instance.num_threads,
        options=config.instance.torch,
    )

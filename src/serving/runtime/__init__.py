"""Model runtimes, chosen by ``ModelConfig.platform``."""

from __future__ import annotations

from pathlib import Path

from serving.config.model import ModelConfig, Platform
from serving.runtime.base import Arrays, Model

__all__ = ["RUNTIME_MODULES", "Arrays", "Model", "create_model"]

# The module that implements each platform (and imports its framework).
RUNTIME_MODULES = {Platform.ONNX: "serving.runtime.onnx", Platform.TORCHSCRIPT: "serving.runtime.torchscript"}


def create_model(config: ModelConfig, version_dir: Path) -> Model:
    """Instantiate (not load) the runtime for one version folder.

    Imports the framework lazily, so a server with only ONNX models never imports torch.
    """
    path = version_dir / config.platform.artifact
    if config.platform is Platform.ONNX:
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

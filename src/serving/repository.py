"""The model repository on disk.

Layout (Triton's): ``<root>/<model>/model.yaml`` and one folder per integer version holding
the platform's artifact (``<root>/<model>/<N>/model.onnx``, ``model.pt``, ``model.py``, ...; a
pipeline's version folder may be empty). The version policy in ``model.yaml``
chooses which versions are served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.config.model import ModelConfig, load_model_config
from serving.errors import ConfigError


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One model folder: its config, every version found, and those the policy serves."""

    name: str
    path: Path
    config: ModelConfig
    available: tuple[int, ...]
    selected: tuple[int, ...]

    def version_dir(self, version: int) -> Path:
        return self.path / str(version)

    def artifact(self, version: int) -> Path:
        """The file that is the version: its artifact, or model.yaml for a pipeline (whose steps it lists)."""
        return self.config.platform.artifact_in(self.version_dir(version)) or self.path / "model.yaml"


def scan_repository(root: Path) -> list[ModelEntry]:
    """Read every model under ``root``, sorted by name.

    Raises:
        ConfigError: the root is missing, a model folder has no or an invalid
            ``model.yaml``, or its policy selects no version that exists.
    """
    if not root.is_dir():
        raise ConfigError(f"model repository {root} does not exist or is not a directory")
    return [
        load_model_entry(model_dir)
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    ]


def load_model_entry(model_dir: Path) -> ModelEntry:
    """Read one model folder: its ``model.yaml`` and version folders.

    Raises:
        ConfigError: no or an invalid ``model.yaml``, or no version the policy selects.
    """
    cfg_path = model_dir / "model.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{model_dir}: no model.yaml (every model folder needs one)")
    config = load_model_config(cfg_path)
    available = sorted(
        int(v.name)
        for v in model_dir.iterdir()
        if v.name.isdigit() and int(v.name) > 0 and config.platform.has_version(v)
    )
    if not available:
        what = config.platform.artifact
        raise ConfigError(f"{model_dir}: no version folder holds {what} (expected {model_dir}/1/{what})")
    selected = config.version_policy.select(available)
    if not selected:
        raise ConfigError(f"{cfg_path}: version_policy selects none of the available versions {available}")
    return ModelEntry(model_dir.name, model_dir, config, tuple(available), tuple(selected))

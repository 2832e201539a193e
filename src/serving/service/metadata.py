"""What the server tells about its models: OIP model metadata (with lineage facts as parameters),
the served version's description (adapters build Triton's model configuration from it),
statistics and the repository index, all read from the registry."""

from __future__ import annotations

from typing import Any

from serving.errors import ModelNotReadyError
from serving.lifecycle.lineage import Lineage
from serving.model_instance import ModelInstance
from serving.registry.lane import VersionState
from serving.registry.versions import ModelRegistry
from serving.types import ModelDescription, ModelMetadata, ModelStats, ModelVersionState, TensorSpec
from serving.version import SERVER_VERSION

EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "statistics",
    "model_repository",
    "parameters",
)
"""The OIP / Triton extensions the server metadata names."""


def server_metadata(server_name: str) -> dict[str, Any]:
    return {"name": server_name, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


def model_metadata(registry: ModelRegistry, name: str, version: str = "") -> ModelMetadata:
    """OIP model metadata.

    Raises:
        ModelNotFoundError, ModelNotReadyError.
    """
    served = registry.get(name, version)
    mv = served.instance
    versions = tuple(str(v.version) for v in registry.versions(name) if v.state is VersionState.READY)
    return ModelMetadata(
        name=name,
        versions=versions,
        platform=mv.model.platform,
        inputs=tuple(TensorSpec(s.name, s.datatype, tuple(mv.wire_shape(s))) for s in mv.inputs),
        outputs=tuple(TensorSpec(s.name, s.datatype, tuple(mv.wire_shape(s))) for s in mv.outputs),
        device=mv.model.device,
        parameters={
            "served_version": str(served.version),
            **lineage_parameters(served.lineage),
            **({f"pipeline.step.{k}": v for k, v in served.pipeline.resolved().items()} if served.pipeline else {}),
        },
    )


def model_ready(registry: ModelRegistry, name: str, version: str = "") -> bool:
    """Whether the version is ready; unknown models raise.

    Raises:
        ModelNotFoundError.
    """
    try:
        registry.get(name, version)
    except ModelNotReadyError:
        return False
    return True


def statistics(registry: ModelRegistry, name: str = "", version: str = "") -> list[ModelStats]:
    """Statistics of one version, every version of a model, or everything.

    Raises:
        ModelNotFoundError.
    """
    if name and version:
        return [registry.get(name, version).stats]
    versions = registry.versions(name) if name else registry.all_versions()
    return [mv.stats for mv in versions if mv.state is VersionState.READY]


def repository_index(registry: ModelRegistry, ready_only: bool = False) -> list[ModelVersionState]:
    rows = [ModelVersionState(mv.name, str(mv.version), mv.state.value, mv.reason) for mv in registry.all_versions()]
    return [r for r in rows if r.state == VersionState.READY.value] if ready_only else rows


def lineage_parameters(lineage: Lineage | None) -> dict[str, str]:
    """The lineage facts model metadata carries, as flat string parameters."""
    if lineage is None:
        return {}
    out = {}
    if lineage.artifact is not None:
        out["lineage.artifact_sha256"] = lineage.artifact.sha256
    if lineage.training_data is not None:
        out["lineage.training_data_fingerprint"] = lineage.training_data.fingerprint
    for key in ("code_revision", "created_by", "created_at"):
        value = getattr(lineage, key)
        if value is not None:
            out[f"lineage.{key}"] = str(value)
    if lineage.evaluation is not None:
        for metric, value in lineage.evaluation.metrics.items():
            out[f"lineage.evaluation.{metric}"] = f"{value:.6g}"
    return out


def describe(mv: ModelInstance) -> ModelDescription:
    """The served version's description (adapters turn it into Triton's config)."""
    policy = mv.config.version_policy
    if policy.all:
        vp: tuple[str, tuple[int, ...]] = ("all", ())
    elif policy.specific is not None:
        vp = ("specific", tuple(policy.specific))
    else:
        vp = ("latest", (policy.latest or 1,))
    return ModelDescription(
        name=mv.name,
        platform=mv.model.platform,
        max_batch_size=mv.max_batch_size,
        inputs=mv.inputs,
        outputs=mv.outputs,
        device=mv.model.device,
        version_policy=vp,
        max_queue_delay_us=int(mv.config.dynamic_batching.max_queue_delay_ms * 1000),
        instances=mv.config.instance.count,
    )

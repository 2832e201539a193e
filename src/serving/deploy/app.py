"""The one place that touches Ray Serve: one application, one ingress deployment.

Each replica hosts every model of the repository in-process (``LocalInferenceService``),
receives HTTP (FastAPI) and gRPC (``inference.GRPCInferenceService``) directly, and runs
the models behind per-version dynamic batchers: one Ray hop on the request path. With
``RAY_SERVE_ENABLE_HA_PROXY=1`` HAProxy forwards straight to the replicas.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from ray import serve
from ray.serve import Application

from serving.deploy.ray_metrics import RayMetrics
from serving.protocol.grpc_v2 import GrpcAdapter
from serving.protocol.http import build_http_app
from serving.repository import ModelEntry, scan_repository
from serving.service import LocalInferenceService
from serving.telemetry import logs, tracing

APP_NAME = "serving"
DEPLOYMENT_NAME = "inference"
GRPC_SERVICER_FUNCTIONS = [
    "serving.protocol.grpc_v2.add_inference_service",
    "serving.protocol.grpc_v2.add_health_service",
]


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (``serve run serving.deploy.app:build_app repository=...``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Path = Field(description="Model repository root, readable on every node.")
    max_request_bytes: PositiveInt = 64 * 1024 * 1024
    max_ongoing_requests: PositiveInt = 1024
    server_name: str = "serving"
    log_format: Literal["json", "text"] = "json"


# Serve's per-request access log costs ~3% of the replica's CPU at load (py-spy); the
# statistics extension and metrics carry the same facts.
@serve.deployment(name=DEPLOYMENT_NAME, logging_config={"enable_access_log": False})
@serve.ingress()
class InferenceDeployment:
    """An ingress replica: HTTP routes come from ``build_http_app``; gRPC RPCs delegate below."""

    def __init__(self, repository: str, max_request_bytes: int, server_name: str, log_format: str = "json") -> None:
        logs.configure(log_format)
        tracing.configure_from_env()
        self.service = LocalInferenceService.from_repository(Path(repository), server_name, metrics=RayMetrics())
        self.grpc = GrpcAdapter(self.service)
        self._max_request_bytes = max_request_bytes

    def __serve_build_asgi_app__(self) -> Any:
        return build_http_app(self.service, max_request_bytes=self._max_request_bytes)

    async def ServerLive(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ServerLive(request, grpc_context)

    async def ServerReady(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ServerReady(request, grpc_context)

    async def ModelReady(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ModelReady(request, grpc_context)

    async def ServerMetadata(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ServerMetadata(request, grpc_context)

    async def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ModelMetadata(request, grpc_context)

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ModelInfer(request, grpc_context)

    async def ModelConfig(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ModelConfig(request, grpc_context)

    async def ModelStatistics(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.ModelStatistics(request, grpc_context)

    async def RepositoryIndex(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.RepositoryIndex(request, grpc_context)

    async def Check(self, request: Any, grpc_context: Any) -> Any:
        return await self.grpc.Check(request, grpc_context)


def build_app(args: dict[str, Any]) -> Application:
    """Typed application builder (Ray's app-builder pattern).

    The replica reserves the sum of its models' ``resources`` and the deployment runs
    the largest ``resources.replicas`` any model asks for.

    Raises:
        ConfigError: the repository or a model.yaml is invalid (checked here, before
            any replica starts, so a typo fails ``serve run`` at once).
    """
    parsed = AppArgs.model_validate(args)
    options = deployment_options(scan_repository(parsed.repository))
    deployment: Any = InferenceDeployment  # a serve.Deployment once decorated
    return deployment.options(max_ongoing_requests=parsed.max_ongoing_requests, **options).bind(  # type: ignore[no-any-return]
        str(parsed.repository.resolve()), parsed.max_request_bytes, parsed.server_name, parsed.log_format
    )


def deployment_options(entries: list[ModelEntry]) -> dict[str, Any]:
    """Replicas and per-replica resources for a repository's models (all hosted together).

    The deployer's ``OTEL_*`` variables travel to every replica (on a cluster too), so tracing
    is configured where the spans are made.
    """
    actor: dict[str, Any] = {
        "num_cpus": sum(e.config.resources.num_cpus for e in entries),
        "num_gpus": sum(e.config.resources.num_gpus for e in entries),
    }
    otel = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    if otel:
        actor["runtime_env"] = {"env_vars": otel}
    return {"num_replicas": max((e.config.resources.replicas for e in entries), default=1), "ray_actor_options": actor}

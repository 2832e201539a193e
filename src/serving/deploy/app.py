"""The one place that touches Ray Serve: one application, one deployment of replicas.

Serve is the control plane here: it places the replicas (CPUs, GPUs, fractions, nodes),
checks their health and replaces the unhealthy, rolls out new code, and scales them from
the load they report. It is not on the request path: each replica loads every model of the
repository, then serves V2 gRPC and HTTP on the server's ports itself (SO_REUSEPORT: all
replicas on a node share them), so a request goes socket -> our adapter -> batcher ->
model in one process. No Serve proxy, HAProxy or Serve request handling (request-id
middleware, request metadata, disconnect watch, access-log records, queue tracking): on a
2-core VM those cost more per request than our whole service (bench/results/online.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from pydantic import Field, ValidationError
from ray import serve
from ray.serve import Application

from serving.config.server import ReplicasConfig, ServerConfig
from serving.config.strict import format_validation_error
from serving.deploy.autoscaling import IN_FLIGHT, QUEUED
from serving.deploy.live_stats import LiveStatsPublisher
from serving.deploy.ray_metrics import RayMetrics
from serving.errors import ConfigError
from serving.protocol.servers import GIL_SWITCH_INTERVAL_S, describe, servers_for
from serving.repository import ModelEntry, scan_repository
from serving.service.local import LocalInferenceService
from serving.telemetry import logs, tracing

log = logging.getLogger(__name__)

APP_NAME = "serving"
DEPLOYMENT_NAME = "inference"
HEALTH_CHECK_PERIOD_S = 5.0
REPLICA_ENV = {
    # Our servers live on the replica's main event loop (grpc.aio wants one loop per process).
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    # Serve's own ingress stays off: no direct-ingress servers in the replica, no HAProxy.
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
    "RAY_SERVE_ENABLE_HA_PROXY": "0",
}


class AppArgs(ServerConfig):
    """Arguments of :func:`build_app` (``serve run serving.deploy.app:build_app repository=...``,
    ``configs/serve.yaml``): the server's one settings model, with its checks (no API keys on a
    non-loopback host is refused here as by ``serving serve``), plus how replicas get their
    environment. Validated from the arguments alone: no ``SERVING_*`` variables or settings file
    are read, so every replica serves exactly what the deployer resolved."""

    inherit_env: bool = Field(
        default=False,
        description="The replicas inherit this process's environment (a local Ray started here): no runtime_env.",
    )


def parse_app_args(args: dict[str, Any], context: dict[str, Any] | None = None) -> AppArgs:
    """Validate :func:`build_app`'s arguments (``context``: ``config.server.NO_FILE_CHECKS`` for a config
    written for other machines).

    Raises:
        ConfigError: an unknown key, a bad value, or a combination the server refuses.
    """
    try:
        return AppArgs.model_validate(args, context=context)
    except ValidationError as exc:
        raise ConfigError(f"serving application arguments: {format_validation_error(exc, AppArgs)}") from exc


# Serve's access log would log nothing (no request passes through Serve), so it is off.
@serve.deployment(name=DEPLOYMENT_NAME, logging_config={"enable_access_log": False})
class InferenceReplica:
    """Loads and warms the models, then listens; reports health and load; drains on stop."""

    async def __init__(self, args: dict[str, Any]) -> None:  # type: ignore[misc]  # Ray awaits it
        parsed = parse_app_args(args)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        logs.configure(parsed.log_format)
        tracing.configure_from_env()
        self._metrics = RayMetrics()
        try:
            self.service = LocalInferenceService.from_repository(
                parsed.repository,
                parsed.server_name,
                self._metrics,
                parsed.state_dir,
                parsed.drain_seconds,
                parsed.prediction_log,
            )
        except BaseException:
            self._metrics.close()
            raise
        self.servers = servers_for(self.service, parsed, self._read_live)
        self._live = LiveStatsPublisher(
            parsed.server_name, serve.get_replica_context().replica_id.unique_id, self.service.live_snapshot
        )
        try:
            addresses = await self.servers.start()
        except BaseException:  # a port that cannot be bound: stop whatever did start
            try:
                await self.servers.stop()
            finally:
                await self._release()
            raise
        self.service.start_watch(parsed.watch_repository)
        log.info("replica pid %d serving %s", os.getpid(), describe(addresses, parsed.host))

    async def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy (replaced)."""
        await self.servers.probe()

    def record_autoscaling_stats(self) -> dict[str, float]:
        in_flight, queued = self.service.in_flight_and_queued()
        return {IN_FLIGHT: float(in_flight), QUEUED: float(queued)}

    async def __del__(self) -> None:
        """Serve awaits this on scale-down, rollout and shutdown (within graceful_shutdown_timeout_s)."""
        try:
            await self.servers.stop()
        finally:  # the models, the metrics pusher and tracing are released even if stopping failed
            await self._release()

    async def _read_live(self) -> list[dict[str, Any]]:
        """Every replica's snapshot, for the operator page (GCS reads, off the event loop)."""
        return await asyncio.to_thread(self._live.read_all)

    async def _release(self) -> None:
        """Release everything the replica started; each part is released even if another fails."""
        try:
            self._live.close()
        finally:
            try:
                await self.service.close()
            finally:
                try:
                    self._metrics.close()
                finally:
                    tracing.shutdown()


def build_app(args: dict[str, Any]) -> Application:
    """Typed application builder (Ray's app-builder pattern).

    Raises:
        ConfigError: the repository or a model.yaml is invalid (checked here, before
            any replica starts, so a typo fails ``serve run`` at once).
    """
    parsed = parse_app_args(args)
    options = deployment_options(
        scan_repository(parsed.repository), parsed.replicas, parsed.drain_seconds, parsed.inherit_env
    )
    deployment: Any = InferenceReplica  # a serve.Deployment once decorated
    return deployment.options(**options).bind(  # type: ignore[no-any-return]
        {**parsed.model_dump(mode="json"), "repository": str(parsed.repository.resolve())}
    )


def deployment_options(
    entries: list[ModelEntry], replicas: ReplicasConfig, drain_seconds: float, inherit_env: bool = False
) -> dict[str, Any]:
    """Replica count (fixed or autoscaled), per-replica resources and shutdown budget.

    A replica reserves the sum of its models' ``resources``; a fixed count is the larger of
    ``replicas.min`` and any model's ``resources.replicas``. The deployer's ``OTEL_*``
    variables and REPLICA_ENV travel to every replica (on a cluster too) through a runtime_env,
    so tracing is configured where the spans are made; a local Ray started by this process
    passes its environment on by itself (``inherit_env``), and replicas without a runtime_env
    can start on Ray's prestarted workers (faster start).
    """
    actor: dict[str, Any] = {
        "num_cpus": sum(e.config.resources.num_cpus for e in entries),
        "num_gpus": sum(e.config.resources.num_gpus for e in entries),
    }
    otel = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
    if not inherit_env:
        actor["runtime_env"] = {"env_vars": {**REPLICA_ENV, **otel}}
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "graceful_shutdown_timeout_s": drain_seconds + 5.0,
        "graceful_shutdown_wait_loop_s": 0.1,
        "max_surge_percent": replicas.surge_percent,
    }
    if replicas.max_per_node is not None:
        options["max_replicas_per_node"] = replicas.max_per_node
    fixed = max([replicas.min, *(e.config.resources.replicas for e in entries)])
    if replicas.max is None:
        options["num_replicas"] = fixed
    else:
        options["autoscaling_config"] = {
            "min_replicas": replicas.min,
            "initial_replicas": replicas.min,
            "max_replicas": replicas.max,
            "upscale_delay_s": replicas.upscale_delay_s,
            "downscale_delay_s": replicas.downscale_delay_s,
            "metrics_interval_s": 1.0,
            "look_back_period_s": 5.0,
            "policy": {
                "policy_function": "serving.deploy.autoscaling:InFlightPolicy",
                "policy_kwargs": {"target_in_flight": replicas.target_in_flight},
            },
        }
    return options

"""Start and stop Serve with the inference application (local Ray or an existing cluster)."""

from __future__ import annotations

import logging
import os
import time

import ray
from ray import serve

from serving.config import ServerSettings
from serving.deploy.app import APP_NAME, GRPC_SERVICER_FUNCTIONS, build_app
from serving.repository import scan_repository

log = logging.getLogger(__name__)

FAST_PATH_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
}
# Replicas behind HAProxy drain for 30 s by default before they exit; a server that is
# told to stop should stop, so drain briefly unless the operator chose otherwise.
DRAIN_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


def configure_environment(settings: ServerSettings) -> None:
    """Set Serve's ingress flags before Ray starts (they are read at import/start time)."""
    for key, value in DRAIN_ENV.items():
        os.environ.setdefault(key, value)
    if settings.fast_path:
        for key, value in FAST_PATH_ENV.items():
            os.environ.setdefault(key, value)
    else:
        for key in FAST_PATH_ENV:
            os.environ.setdefault(key, "0")


def start(settings: ServerSettings) -> float:
    """Start Ray (unless joining a cluster), Serve and the application; returns seconds taken.

    Raises:
        ConfigError: the repository is invalid (checked before Ray starts).
    """
    began = time.monotonic()
    scan_repository(settings.repository)
    configure_environment(settings)
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=True)
    else:
        ray.init(
            address="local",
            num_cpus=settings.num_cpus,
            include_dashboard=False,
            _metrics_export_port=settings.metrics_port,
            _system_config={"worker_niceness": 0},
        )
    serve.start(
        http_options={"host": settings.host, "port": settings.http_port},
        grpc_options={"port": settings.grpc_port, "grpc_servicer_functions": GRPC_SERVICER_FUNCTIONS},
    )
    app = build_app(
        {
            "repository": str(settings.repository),
            "max_request_bytes": settings.max_request_bytes,
            "max_ongoing_requests": settings.max_ongoing_requests,
            "server_name": settings.server_name,
            "log_format": settings.log_format,
        }
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    return time.monotonic() - began


def stop() -> None:
    """Shut Serve down and disconnect (a local Ray stops with its processes)."""
    try:
        serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()

"""Connect to Ray: a cluster when given an address (or ``RAY_ADDRESS``), else a local Ray started
here. Shared by ``serving serve`` and ``serving score`` so both start Ray the same way."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import ray


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    preload: Sequence[str] = (),
    quiet: bool = False,
) -> bool:
    """Start or join Ray unless this process already is connected; returns True when it connected.

    A local Ray runs without the dashboard, at the workers' normal priority (Ray lowers it by
    default), with its workers importing ``preload`` while they idle. ``quiet`` keeps Ray's
    own INFO logs and the workers' output off this process's terminal.
    """
    if ray.is_initialized():
        return False
    level = logging.ERROR if quiet else logging.INFO
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=level, log_to_driver=not quiet)
        return True
    system_config: dict[str, object] = {"worker_niceness": 0}
    if preload:
        system_config["preload_python_modules"] = list(preload)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        logging_level=level,
        log_to_driver=not quiet,
        _metrics_export_port=metrics_port,
        _system_config=system_config,
    )
    return True

"""Connect to Ray: a cluster when given an address (or ``RAY_ADDRESS``), else a local Ray started
here. Shared by ``serving serve`` and ``serving score`` so both start Ray the same way."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import ray

# Ray runs its raylet and GCS server on the jemalloc it ships (LD_PRELOAD). With jemalloc's
# per-thread caches on, the idle raylet's resident memory climbs for half an hour and more
# (measured: 30 -> 40 MiB in 30 minutes, the same with and without requests); with them off it
# stays flat, and Ray's task throughput is unchanged (both in the README's soak section).
# Ray hands RAY_JEMALLOC_CONF to the components named in RAY_JEMALLOC_PROFILE as MALLOC_CONF.
RAY_ALLOCATOR_ENV = {"RAY_JEMALLOC_CONF": "tcache:false", "RAY_JEMALLOC_PROFILE": "raylet,gcs_server"}


TOKEN_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Where Ray warns, at every local start, that token authentication is on (its default)."""


@contextlib.contextmanager
def without_idle_head_processes() -> Iterator[None]:
    """Start a local Ray without the two head processes nothing here uses.

    ``ray.init(include_dashboard=False)`` still starts the dashboard's API server, loading only
    its usage-stats module (76 MiB PSS; ``ray.init`` waits ~1 s for it to publish its address),
    and the autoscaler monitor (50 MiB), which adds and removes nodes of clusters made by Ray's
    cluster launcher: a local Ray of one node has none. ``ray.init`` has no switch for either
    (``ray start`` has ``--no-monitor``), so the head node's two starters are skipped while this
    process starts its local Ray (Ray 2.60's ``Node.start_api_server`` and ``Node.start_monitor``;
    the node records no process for them and stops the rest as usual). Serve, Ray Data, the
    metrics agent (the dashboard *agent*, kept) and the tests' clusters (``ray start``) do not
    use them. Measured in ``bench/results/footprint.md``.
    """
    node = ray._private.node.Node
    start_api_server, start_monitor = node.start_api_server, node.start_monitor
    node.start_api_server = _skip  # type: ignore[method-assign]
    node.start_monitor = _skip  # type: ignore[method-assign]
    try:
        yield
    finally:
        node.start_api_server = start_api_server  # type: ignore[method-assign]
        node.start_monitor = start_monitor  # type: ignore[method-assign]


def _skip(*_: object, **__: object) -> None:
    return None


@contextlib.contextmanager
def allocator_env() -> Iterator[None]:
    """RAY_ALLOCATOR_ENV while Ray starts its processes, unless the user set either variable."""
    if any(k in os.environ for k in RAY_ALLOCATOR_ENV) or "LD_PRELOAD" in os.environ:
        yield
        return
    os.environ.update(RAY_ALLOCATOR_ENV)
    try:
        yield
    finally:
        for k in RAY_ALLOCATOR_ENV:
            os.environ.pop(k, None)


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    metrics_port: int | None = None,
    preload: Sequence[str] = (),
    quiet: bool = False,
    ray_info: bool = True,
    dashboard: bool = False,
) -> bool:
    """Start or join Ray unless this process already is connected; returns True when it connected.

    A local Ray runs without the dashboard (``dashboard``: with it, on port 8265, and with the
    autoscaler monitor ``ray status`` reads; see :func:`without_idle_head_processes`), at the workers' normal priority (Ray lowers it by
    default), with its workers importing ``preload`` while they idle, and its raylet and GCS
    server without jemalloc's thread caches (RAY_ALLOCATOR_ENV). ``quiet`` keeps Ray's
    own INFO logs and the workers' output off this process's terminal; ``ray_info=False`` keeps
    only Ray's INFO logs off (and its notice that a local Ray uses token authentication, Ray's
    default, which stays on), the workers' output still shown.
    """
    if ray.is_initialized():
        return False
    level = logging.ERROR if quiet else (logging.INFO if ray_info else logging.WARNING)
    if not ray_info or quiet:
        logging.getLogger(TOKEN_AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=level, log_to_driver=not quiet)
        return True
    system_config: dict[str, object] = {"worker_niceness": 0}
    if preload:
        system_config["preload_python_modules"] = list(preload)
    with allocator_env(), contextlib.nullcontext() if dashboard else without_idle_head_processes():
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=dashboard,
            logging_level=level,
            log_to_driver=not quiet,
            _metrics_export_port=metrics_port,
            _system_config=system_config,
        )
    return True

"""Start and stop Serve with the inference application (local Ray or an existing cluster)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import ray
from ray import serve
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE  # Serve's names for its controller

from serving.config.server import ServerSettings
from serving.deploy.app import APP_NAME, REPLICA_ENV, build_app
from serving.errors import StartupError
from serving.ports import check_port_free
from serving.ray_start import init_ray
from serving.repository import ModelEntry, scan_repository
from serving.runtime import RUNTIME_MODULES

log = logging.getLogger(__name__)

SERVE_LOGGER = "ray.serve"


def start(settings: ServerSettings, verbose: bool = False) -> float:
    """Start Ray (unless joining a cluster), Serve and the application; returns seconds taken.

    Returns once every replica has loaded its models and listens.

    Raises:
        ConfigError: the repository is invalid or a port is taken (checked before Ray starts).
    """
    began = time.monotonic()
    entries = scan_repository(settings.repository)
    os.environ.update(REPLICA_ENV)  # read by Serve at import time; a local Ray's workers inherit it
    if not settings.ray_address:
        check_port_free(settings.host, settings.http_port, "HTTP")
        check_port_free(settings.host, settings.grpc_port, "gRPC")
        check_port_free("127.0.0.1", settings.metrics_port, "metrics")
    connected = init_ray(
        settings.ray_address,
        num_cpus=settings.num_cpus,
        metrics_port=settings.metrics_port,
        preload=preload_modules(entries),
        ray_info=verbose,
        dashboard=settings.ray_dashboard,
    )
    if connected and starts_local_ray(settings):  # Ray's own line says so only with --verbose
        log.info("Started a local Ray (%d CPUs; its own logs: --verbose)", settings.num_cpus or os.cpu_count() or 1)
    if not verbose:  # Serve's own INFO lines, in this process and from its controller
        logging.getLogger(SERVE_LOGGER).setLevel(logging.WARNING)
    serve.start(proxy_location="Disabled", logging_config={"log_level": "INFO" if verbose else "WARNING"})
    deploy(settings)
    return time.monotonic() - began


def preload_modules(entries: list[ModelEntry]) -> list[str]:
    """What a local Ray's workers import while Serve's controller starts: the replica's code and
    the frameworks of the repository's models (torch alone takes ~1.2 s here). Measured on this
    2-core VM: ready 0.4-0.6 s sooner, at the memory of those imports in each idle worker."""
    runtimes = {RUNTIME_MODULES[e.config.platform] for e in entries if e.config.platform in RUNTIME_MODULES}
    return ["serving.deploy.app", *sorted(runtimes)]


def deploy(settings: ServerSettings) -> None:
    """Deploy the application; on a running one, a rolling update of every replica.

    Serve gives each deploy a new code version, so every replica is replaced: with
    ``replicas.surge_percent`` > 0 the replacements load and listen before the old replicas
    drain, so the ports never go unanswered. Returns once the application is running.
    """
    paths = {"repository": settings.repository, "api_keys": settings.api_keys, "state_dir": settings.state_dir}
    app = build_app(
        {
            **settings.model_dump(mode="json"),  # the same settings model: every field, every check
            **{k: str(v.resolve()) if v is not None else None for k, v in paths.items()},  # as replicas see them
            "tls": {k: str(v.resolve()) for k, v in settings.tls if v is not None} if settings.tls else None,
            "inherit_env": not settings.ray_address,
        }
    )
    # serve.run waits with a 1 s poll (CLIENT_POLLING_INTERVAL_S): ~1 s of a ~6 s start. Deploy
    # without waiting and watch the public status every 0.25 s instead.
    serve._run(app, _blocking=False, name=APP_NAME, route_prefix=None)
    wait_running(APP_NAME)


def wait_running(name: str, poll_s: float = 0.25) -> None:
    """Return once every replica of the application is up (loaded, warmed, listening).

    Raises:
        StartupError: the deployment failed; the message is the reason Serve reports (a
            replica's constructor raised, a port could not be bound, ...), without Serve's traceback.
    """
    while True:
        app = serve.status().applications.get(name)
        status = getattr(app, "status", None)
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            log.debug("application %s %s: %s", name, status, app.message if app else "")
            raise StartupError(f"the replicas could not start ({status}): {failure_reason(app.message if app else '')}")
        time.sleep(poll_s)


def failure_reason(message: str) -> str:
    """The reason in a Serve status message: the exception line of the traceback it may hold
    (the whole report stays in Ray's logs, and in the console with --verbose)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "no reason given (see the Ray logs under /tmp/ray/session_latest/logs/serve/)"
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and ("Error" in line or "Exception" in line):
            return line
    return lines[-1]


def starts_local_ray(settings: ServerSettings) -> bool:
    """No cluster named (``ray_address``, ``RAY_ADDRESS``): ``start`` runs a local Ray."""
    return not (settings.ray_address or os.environ.get("RAY_ADDRESS"))


STOP_MARGIN_S = 30.0
"""How long past the replicas' drain (``drain_seconds`` + Serve's 5 s) stopping waits for Serve to
confirm that the application is deleted, before Ray is shut down all the same: a controller that no
longer answers (seen stopped, SIGSTOP) must not keep ``serving serve`` from exiting."""


def stop(settings: ServerSettings) -> bool:
    """Every replica drains and stops, then this process disconnects. A local Ray stops with its
    processes: the application is deleted (the replicas drain) and Ray shut down, which stops
    Serve's controller with it (``serve.shutdown()`` would have the controller kill itself while
    Ray retries that call, and log the retry on Ctrl-C). On a cluster Serve is shut down. Serve's
    answer is awaited for the drain plus ``STOP_MARGIN_S`` at most: False when it did not come (the
    replicas may not have drained). Its controller is then killed, which answers the thread still
    waiting on it with an error, so that Ray is shut down with no call of this process left in
    flight (Ray ends a process whose thread is still in a call at its shutdown, with status 1,
    before it has stopped the local Ray's processes in order)."""
    if not ray.is_initialized():
        return True
    local = starts_local_ray(settings)
    bound = settings.drain_seconds + 5.0 + STOP_MARGIN_S
    ended = threading.Event()
    killing = threading.Event()

    def delete() -> None:
        try:
            if local:
                serve.delete(APP_NAME)
            else:
                serve.shutdown()  # type: ignore[no-untyped-call]
        except Exception:
            if not killing.is_set():
                log.exception("stopping the application failed")
        finally:
            ended.set()

    answered = False
    try:
        threading.Thread(target=delete, name="serve-stop", daemon=True).start()
        answered = ended.wait(bound)
        if not answered:
            log.error("Serve did not confirm the application's end within %gs: its controller is killed", bound)
            killing.set()
            kill_serve_controller()
            if not local:
                log.error("Serve's replicas may still run on the cluster, as detached actors (`ray list actors`)")
            if not ended.wait(KILL_WAIT_S):
                log.error("the call to Serve did not end within %gs of its controller's kill", KILL_WAIT_S)
            sys.stdout.flush()
            sys.stderr.flush()
    finally:
        ray.shutdown()
    return answered


KILL_WAIT_S = 15.0
"""How long a killed Serve controller's death takes at most to reach the call waiting on it."""


def kill_serve_controller() -> None:
    """Kills Serve's controller; errors are logged. Its replicas are detached actors and do not die
    with it: a local Ray's shutdown stops them, and on a cluster they are left running, as Serve's
    unanswered shutdown left them."""
    try:
        ray.kill(ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE), no_restart=True)
    except Exception:
        log.exception("killing Serve's controller failed")

"""Integration tests: one real server (`serving serve`, local Ray) per session.

Clients are unmodified tritonclient (HTTP and gRPC) and plain HTTP/gRPC channels; this
process never imports the server's own protobuf module (tritonclient's copy of the
``inference.*`` messages cannot share a process with it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from otlp_receiver import OtlpReceiver

import models
from conftest_values import MAX_REQUEST_BYTES
from models import build_demo_and_test_repository
from server_process import MODES, ServerProcess, mode_args


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``both_modes`` run against the session's Ray-mode server and its standalone one."""
    if "server" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_modes"):
        metafunc.parametrize("server", MODES, indirect=True, scope="session")


@pytest.fixture(scope="session", autouse=True)
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The demo repository is trained once for the run: in the folder the pytest-xdist workers
    share (the run's base temp folder), or this process's own when there are no workers (also
    with xdist not loaded: ``-p no:xdist``)."""
    base = tmp_path_factory.getbasetemp()
    models.DEMO_CACHE = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "demo-repository"
    yield
    models.DEMO_CACHE = None


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_and_test_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def session_server(
    mode: str, repository: Path, tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp(f"logs-{mode}")
    proc = ServerProcess(
        repository,
        logs / "server.log",
        args=(*mode_args(mode), "--prediction-log", str(logs / "prediction_log")),
        env={
            "SERVING_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def ray_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> Iterator[ServerProcess]:
    yield from session_server("ray", repository, tmp_path_factory, otlp)


@pytest.fixture(scope="session")
def standalone_server(
    repository: Path, tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> Iterator[ServerProcess]:
    yield from session_server("standalone", repository, tmp_path_factory, otlp)


@pytest.fixture(scope="session")
def server(request: pytest.FixtureRequest) -> ServerProcess:
    """The session's server (Ray mode, or the mode a ``both_modes`` test runs in), exporting traces
    (OTLP/HTTP, standard OTEL_* variables) to ``otlp``. Each mode's server is a session fixture of
    its own, started once per worker: switching between the modes restarts neither."""
    mode: str = getattr(request, "param", "ray")
    return request.getfixturevalue(f"{mode}_server")  # type: ignore[no-any-return]

"""Start-up failures are clear; stopping the server leaves no process behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from models import add_model
from server_process import MODES, ServerProcess, free_port, mode_args

pytestmark = pytest.mark.integration


def serving_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "serving")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("mode", MODES)
def test_typo_in_model_yaml_fails_at_start_naming_file_and_key(tmp_path: Path, mode: str) -> None:
    add_model(tmp_path, versions=(1,), max_bach_size=4)
    result = serving_cli("serve", *mode_args(mode), "--repository", str(tmp_path))
    assert result.returncode == 2
    assert str(tmp_path / "add" / "model.yaml") in result.stderr
    assert "max_bach_size: unknown key" in result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_missing_repository_fails_at_start(tmp_path: Path, mode: str) -> None:
    result = serving_cli("serve", *mode_args(mode), "--repository", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_sigint_stops_every_process_the_server_started(tmp_path: Path, mode: str) -> None:
    repo = tmp_path / "repo"
    add_model(repo, versions=(1,))
    server = ServerProcess(repo, tmp_path / "server.log", args=mode_args(mode, 1 if mode == "ray" else 2))
    server.start()
    try:
        started = server.descendants()
        names = server.descendant_names()
        commands = [" ".join(p.cmdline()) for p in started]
    finally:
        code = server.stop()
    assert code == 0, server.log()
    if mode == "ray":
        assert any("raylet" in n for n in names), names
        assert any("ServeRepli" in n for n in names), names
        # Not asked for (--ray-dashboard): neither the dashboard's API server nor the autoscaler monitor.
        assert not [c for c in commands if "dashboard/dashboard.py" in c or "autoscaler/_private/monitor.py" in c]
    else:  # the supervisor's two workers, and no Ray
        assert sum("serving.standalone.worker_process" in c for c in commands) == 2, commands
        assert not any("ray" in n for n in names), names
    deadline = time.monotonic() + 30
    alive = started
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if running(p)]
        time.sleep(0.5)
    assert not alive, [p.pid for p in alive]


@pytest.mark.both_modes
def test_two_servers_on_one_host_answer_with_their_own_models(server: ServerProcess, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_model(repo, versions=(1,))
    second = ServerProcess(repo, tmp_path / "server.log", args=mode_args(server.mode))
    second.start()
    try:
        x = np.zeros((1, 4), np.float32)
        for target, plus in ((second, 1), (server, 3)):  # the session's `add` serves versions 3 and 2
            client = thttp.InferenceServerClient(target.http_url)
            inp = thttp.InferInput("x", [1, 4], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            np.testing.assert_array_equal(client.infer("add", [inp]).as_numpy("y"), x + plus)
            g = tgrpc.InferenceServerClient(target.grpc_url)
            gi = tgrpc.InferInput("x", [1, 4], "FP32")
            gi.set_data_from_numpy(x)
            np.testing.assert_array_equal(g.infer("add", [gi]).as_numpy("y"), x + plus)
    finally:
        second.stop()


@pytest.mark.both_modes
def test_a_second_server_on_taken_ports_fails_at_start_naming_the_port(server: ServerProcess, tmp_path: Path) -> None:
    """The session's server holds its ports (with SO_REUSEPORT); a second one must not share them."""
    repo = tmp_path / "repo"
    add_model(repo, versions=(1,))
    for flag, port in (("--http-port", server.http_port), ("--grpc-port", server.grpc_port)):
        ports = {"--http-port": str(free_port()), "--grpc-port": str(free_port()), "--metrics-port": str(free_port())}
        ports[flag] = str(port)
        args = [item for pair in ports.items() for item in pair]
        result = serving_cli("serve", *mode_args(server.mode), "--repository", str(repo), *args)
        assert result.returncode == 2, result.stderr
        assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
        assert "Traceback" not in result.stderr
    # ...and the first server still answers with its own model.
    client = thttp.InferenceServerClient(server.http_url)
    assert client.is_server_ready()


@pytest.mark.both_modes
def test_grpc_request_ids_are_echoed_and_internal_errors_name_them(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as rpc:
            call(b"\xff\xff", timeout=30, metadata=(("x-request-id", "req-42"),))
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ("x-request-id", "req-42") in tuple(rpc.value.trailing_metadata() or ())


def test_the_local_rays_raylet_and_gcs_run_without_jemallocs_thread_caches(server: ServerProcess) -> None:
    """The setting that keeps the idle raylet's memory flat (deploy/ray_start.RAY_ALLOCATOR_ENV)
    reaches the processes it is for: Ray hands it to them as MALLOC_CONF with jemalloc preloaded."""
    seen = {}
    for p in server.descendants():
        try:
            exe = Path(p.cmdline()[0]).name if p.cmdline() else ""
            if exe in ("raylet", "gcs_server"):
                seen[exe] = p.environ()
        except psutil.Error:
            continue
    assert set(seen) == {"raylet", "gcs_server"}
    for env in seen.values():
        assert env.get("MALLOC_CONF") == "tcache:false"
        assert "jemalloc" in env.get("LD_PRELOAD", "")


def test_a_standalone_server_of_onnx_models_maps_neither_torch_nor_ray(tmp_path: Path) -> None:
    """Frameworks load when a version needs them, and standalone never loads Ray: the serving
    process of an ONNX-only repository has onnxruntime mapped, and no libtorch or Ray's core."""
    repo = tmp_path / "repo"
    add_model(repo, versions=(1,))
    server = ServerProcess(repo, tmp_path / "server.log", args=mode_args("standalone"))
    server.start()
    try:
        assert server.proc is not None
        libraries = {m.path.rsplit("/", 1)[-1] for m in psutil.Process(server.proc.pid).memory_maps()}
    finally:
        assert server.stop() == 0, server.log()
    assert any("onnxruntime" in name for name in libraries), sorted(libraries)
    assert not [name for name in libraries if "libtorch" in name or "_raylet" in name]


def test_a_standalone_reload_that_fails_keeps_the_running_generation_serving(tmp_path: Path) -> None:
    """SIGHUP with a model.yaml broken meanwhile: the reload is refused with the reason, and the
    models loaded before keep answering; once the file is mended, the next SIGHUP reloads."""
    repo = tmp_path / "repo"
    add_model(repo, versions=(1,))
    server = ServerProcess(repo, tmp_path / "server.log", args=mode_args("standalone"))
    server.start()
    config = repo / "add" / "model.yaml"
    good = config.read_text()
    try:
        assert server.proc is not None
        config.write_text(good + "max_bach_size: 4\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "reload failed")
        assert "max_bach_size: unknown key" in server.log()
        client = thttp.InferenceServerClient(server.http_url)
        x = np.zeros((1, 4), np.float32)
        inp = thttp.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        np.testing.assert_array_equal(client.infer("add", [inp]).as_numpy("y"), x + 1)
        config.write_text(good)
        server.proc.send_signal(signal.SIGHUP)
        wait_for_log(server, "reload done")
        np.testing.assert_array_equal(client.infer("add", [inp]).as_numpy("y"), x + 1)
    finally:
        assert server.stop() == 0, server.log()


def wait_for_log(server: ServerProcess, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{server.log()}"
        time.sleep(0.2)

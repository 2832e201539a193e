"""Footprint, side by side in one run: cold start (the command to the first 200 on
/v2/health/ready, median of --runs) and idle memory (PSS summed over every process of the server,
--idle-s after ready) for `serving serve --standalone`, `--standalone --workers 2`, Ray mode, and
PyTriton (bench/pytriton_server.py), each serving the demo's ONNX digits model alone.

PSS (proportional set size) counts a page shared by n processes as 1/n in each, so the sum over a
server's processes is what the server adds to the machine. Page cache is warm (each system starts
once before the timed runs): a start measured here is the start of a machine that has run the
server before. Writes bench/results/footprint.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from online import libpython_dir  # noqa: E402

from serving.demo import build_digits  # noqa: E402

from server_process import free_port  # noqa: E402

MIB = 1024 * 1024
SERVING = str(Path(sys.executable).parent / "serving")


def role(process: psutil.Process) -> str:
    """A short name for what a process of the server is."""
    try:
        cmd = " ".join(process.cmdline())
        name = process.name()
    except psutil.Error:
        return "gone"
    for marker, label in (
        ("serving.standalone.worker_process", "standalone worker"),
        ("serving serve", "serving serve (driver / supervisor)"),
        ("pytriton_server.py", "pytriton driver"),
        ("tritonserver", "tritonserver"),
        ("triton_python_backend_stub", "triton python stub"),
        ("ServeReplica", "Serve replica"),
        ("ServeController", "Serve controller"),
        ("gcs_server", "Ray GCS"),
        ("raylet", "raylet"),
        ("dashboard/agent.py", "Ray dashboard agent"),
        ("runtime_env/agent", "Ray runtime-env agent"),
        ("dashboard.py", "Ray dashboard"),
        ("log_monitor", "Ray log monitor"),
        ("ray::IDLE", "Ray idle worker"),
        ("default_worker.py", "Ray worker"),
    ):
        if marker in cmd or marker in name:
            return label
    return name


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def pss_by_role(pid: int) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for process in tree(pid):
        try:
            out[role(process)] += process.memory_full_info().pss / MIB
        except psutil.Error:
            continue
    return dict(out)


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float = 240) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return time.monotonic() - began
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("not ready in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            for child in tree(proc.pid)[1:]:
                child.kill()
            proc.kill()
            proc.wait()


def run_once(
    name: str, command: list[str], http: int, work: Path, idle_s: float, env: dict[str, str]
) -> tuple[float, dict[str, float]]:
    with (work / f"{name.replace(' ', '_')}.log").open("ab") as log:
        began = time.monotonic()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        try:
            wait_ready(proc, f"http://127.0.0.1:{http}/v2/health/ready")
            seconds = time.monotonic() - began
            time.sleep(idle_s)
            memory = pss_by_role(proc.pid)
        finally:
            stop(proc)
    return seconds, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--no-pytriton", action="store_true")
    parser.add_argument("--only", help="measure only the systems whose name contains this")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serving-footprint-"))
    repo = work / "repo"
    build_digits(repo)
    onnx = repo / "digits" / "2" / "model.onnx"

    def serving(*extra: str) -> tuple[list[str], int, dict[str, str]]:
        http, grpc, metrics = free_port(), free_port(), free_port()
        command = [SERVING, "serve", "--repository", str(repo), "--http-port", str(http)]
        return [*command, "--grpc-port", str(grpc), "--metrics-port", str(metrics), *extra], http, {}

    systems = {
        "standalone": lambda: serving("--standalone"),
        "standalone --workers 2": lambda: serving("--standalone", "--workers", "2"),
        "Ray mode": lambda: serving(),
    }
    if not args.no_pytriton and (not args.only or args.only in "PyTriton"):
        subprocess.run(["bash", str(HERE / "pytriton_env.sh")], check=True)
        python = str(HERE / ".pytriton/bin/python")

        def pytriton() -> tuple[list[str], int, dict[str, str]]:
            http, grpc, metrics = free_port(), free_port(), free_port()
            command = [python, str(HERE / "pytriton_server.py"), "--model", str(onnx), "--name", "digits"]
            ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
            return [*command, *ports], http, {"LD_LIBRARY_PATH": libpython_dir(python)}

        systems["PyTriton"] = pytriton

    rows = []
    breakdowns = {}
    for name, make in systems.items():
        if args.only and args.only not in name:
            continue
        command, http, env = make()
        run_once(name, command, http, work, 0.0, env)  # warm the page cache
        starts, totals = [], []
        for _ in range(args.runs):
            command, http, env = make()
            seconds, memory = run_once(name, command, http, work, args.idle_s, env)
            starts.append(seconds)
            totals.append(sum(memory.values()))
            breakdowns[name] = memory
            print(f"[{name:22s}] ready in {seconds:5.2f}s, idle PSS {sum(memory.values()):6.0f} MiB", flush=True)
        rows.append((name, statistics.median(starts), min(starts), max(starts), statistics.median(totals)))

    lines = [
        "# Footprint: cold start and idle memory (`make bench-footprint`)",
        "",
        f"The demo's ONNX digits model alone; {args.runs} starts each (median, min-max), page cache warm; "
        f"idle PSS summed over every process of the server, {args.idle_s:.0f} s after ready. "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| server | cold start, median | min-max | idle PSS, MiB (median) |",
        "|---|---|---|---|",
        *(f"| {n} | {m:.2f} s | {lo:.2f}-{hi:.2f} s | {pss:,.0f} |" for n, m, lo, hi, pss in rows),
        "",
        "Idle PSS by process (the last run of each), MiB:",
        "",
    ]
    for name, memory in breakdowns.items():
        parts = ", ".join(f"{r} {v:.0f}" for r, v in sorted(memory.items(), key=lambda kv: -kv[1]))
        lines.append(f"- **{name}** ({len(memory)} kinds of process): {parts}")
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results" / "footprint.md").write_text(text)


if __name__ == "__main__":
    main()

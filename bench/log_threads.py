"""The prediction log's cost by thread: two standalone servers of the reference MLP, one without a
log and one logging every request, in alternating windows of batch-1 gRPC calls (grpc.aio, 16 in
flight); each thread's CPU (user + system, from /proc) per call answered, the threads named as
Python names them (``py-spy dump``; threads Python does not know by their OS name). Where the
log's CPU is spent: the event loop thread's hand-over, the writer thread's Parquet, or another
thread slowed by them.

    .venv/bin/python bench/log_threads.py --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import grpc  # noqa: E402
import psutil  # noqa: E402
from online import FEATURES, MODEL, reference_setup  # noqa: E402
from paired import calls_per_second, infer_request  # noqa: E402

from serving.protocol._pb import inference_pb2_grpc  # noqa: E402

from server_process import ServerProcess, mode_args  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PY_SPY = Path(sys.executable).parent / "py-spy"


def processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def python_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python's name for it, over ``pid``'s process tree."""
    names: dict[int, str] = {}
    for proc in processes(pid):
        dump = subprocess.run([str(PY_SPY), "dump", "--json", "--pid", str(proc.pid)], capture_output=True, text=True)
        if dump.returncode == 0:
            names.update({int(t["os_thread_id"]): t.get("thread_name") or "?" for t in json.loads(dump.stdout)})
    return names


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """OS thread id -> (its OS name, its CPU seconds so far), over ``pid``'s process tree."""
    cpu: dict[int, tuple[str, float]] = {}
    for proc in processes(pid):
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                stat = Path(f"/proc/{proc.pid}/task/{tid}/stat").read_text()
            except FileNotFoundError:  # a thread that ended
                continue
            fields = stat.rsplit(")", 1)[1].split()
            cpu[int(tid)] = (stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / TICKS)
    return cpu


async def window(url: str, seconds: float) -> float:
    channel = grpc.aio.insecure_channel(url)
    try:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        return await calls_per_second(stub, infer_request(MODEL, "input", FEATURES), 16, seconds)
    finally:
        await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0, help="one window")
    args = parser.parse_args()
    work, repo, _ = reference_setup("serving-log-threads-")
    servers = {
        "no log": ServerProcess(repo, work / "off.log", args=mode_args("standalone")),
        "every request logged": ServerProcess(
            repo,
            work / "on.log",
            env={"SERVING_PREDICTION_LOG__SAMPLE_RATE": "1"},
            args=(*mode_args("standalone"), "--prediction-log", str(work / "log")),
        ),
    }
    spent: dict[str, dict[str, float]] = {name: {} for name in servers}
    calls = dict.fromkeys(servers, 0.0)
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():  # warm up; the log's writer thread starts with its first row
            asyncio.run(window(server.grpc_url, 4.0))
        names = {name: python_names(s.proc.pid) for name, s in servers.items() if s.proc is not None}
        for r in range(args.rounds):
            for name in list(servers) if r % 2 == 0 else list(servers)[::-1]:
                server = servers[name]
                assert server.proc is not None
                before = thread_cpu(server.proc.pid)
                began = time.monotonic()
                calls[name] += asyncio.run(window(server.grpc_url, args.seconds)) * (time.monotonic() - began)
                for tid, (os_name, seconds) in thread_cpu(server.proc.pid).items():
                    thread = names[name].get(tid, os_name)
                    spent[name][thread] = spent[name].get(thread, 0.0) + seconds - before.get(tid, ("", 0.0))[1]
    finally:
        for server in servers.values():
            server.stop()
    threads = sorted(set().union(*spent.values()), key=lambda t: -max(s.get(t, 0.0) for s in spent.values()))
    per_call = {name: {t: spent[name].get(t, 0.0) / calls[name] * 1e6 for t in threads} for name in servers}
    a, b = servers
    print(f"\n| thread | {a}, us a call | {b} | difference |\n|---|---|---|---|")
    for t in threads:
        if max(per_call[a][t], per_call[b][t]) >= 0.5:
            print(f"| {t} | {per_call[a][t]:.1f} | {per_call[b][t]:.1f} | {per_call[b][t] - per_call[a][t]:+.1f} |")
    total = {name: sum(per_call[name].values()) for name in servers}
    print(f"| every thread | {total[a]:.1f} | {total[b]:.1f} | {total[b] - total[a]:+.1f} |")
    print(f"\n{calls[a]:,.0f} / {calls[b]:,.0f} calls over {args.rounds} rounds of {args.seconds:g} s windows")


if __name__ == "__main__":
    main()

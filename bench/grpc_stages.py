"""Where a gRPC request's CPU goes, stage by stage (issue 24), on the reference MLP.

perf_analyzer (tritonclient 2.51.0) drives `serving serve` over gRPC with batch-1 requests, sync
(one thread per slot) or ``--async`` (calls multiplexed on one channel). While it runs:

1. nothing attached, the CPU time of every process (perf_analyzer, the replica, the rest of the
   server) and of every thread of the replica (``/proc/PID/task/TID/stat``) over a window, divided by
   the requests the server answered in it (its V2 statistics): microseconds of CPU per request;
2. then ``py-spy record --nonblocking --threads`` samples the replica's Python threads (without
   pausing them), and each thread's CPU from (1) is split by the stage of its busy samples: the
   innermost frame that names a stage (STAGES, in order). A thread that runs no Python (grpc core's
   EventEngine, Ray's own) keeps its name as its stage.

Writes bench/results/grpc_stages.md. Run it alone on the machine: anything else shares the cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from online import FEATURES, MODEL, TOOLS, reference_setup  # noqa: E402

from server_process import ServerProcess  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")

# (stage, patterns matched against a frame's function and file), innermost match wins.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("onnxruntime (the model)", ("onnxruntime",)),
    ("protobuf <-> numpy (codecs)", ("serving/codecs", "serving/protocol/grpc_tensors", "frombuffer")),
    ("protobuf parse / serialize", ("google/protobuf", "_pb2", "upb_", "ParseFromString", "SerializeToString")),
    ("auth and admission", ("serving/auth", "admission", "serving/service/limits")),
    ("metrics and tracing", ("prometheus_client", "opentelemetry", "serving/telemetry", "ray/util/metrics")),
    (
        "batcher hand-off and wake-ups",
        ("serving/batching", "concurrent/futures", "threading.py", "call_soon_threadsafe"),
    ),
    ("service and routing", ("serving/service", "serving/registry", "serving/lifecycle", "serving/model_instance")),
    ("compiled front end (take, dispatch, finish)", ("serving/protocol/grpc_frontends", "_frontend")),
    ("gRPC adapter (metadata, answer)", ("serving/protocol",)),
    ("grpc.aio (Cython glue)", ("grpc/_cython", "cygrpc", "_cygrpc")),
    ("grpc core (C++)", ("grpc_core", "grpc_", "gpr_", "tsi_", "absl")),
    ("asyncio event loop", ("asyncio/", "uvloop", "selectors.py", "epoll")),
]
OTHER = "other Python (interpreter, libraries)"
POLLER = "grpc.aio poller thread (completion queue, in C)"
IN_C = "event loop thread, in C (split below)"
# The event loop thread's time in C, by the innermost native frame that names one (py-spy --native).
NATIVE: list[tuple[str, tuple[str, ...]]] = [
    ("protobuf parse / serialize (upb)", ("upb", "protobuf", "_message")),
    ("grpc core (C++)", ("grpc_core", "grpc_", "gpr_", "absl", "tsi_")),
    ("grpc.aio (Cython)", ("cygrpc", ".pyx", "grpc/_cython", "__pyx")),
    ("asyncio loop (C and Python)", ("_asyncio", "asyncio/", "uvloop", "selectors", "select_epoll", "epoll")),
]


def thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of ``pid``: its kernel name and CPU seconds so far."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (
            stat[stat.index("(") + 1 : stat.rindex(")")],
            (int(fields[11]) + int(fields[12])) / TICKS,
        )
    return out


def process_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def answered(server: ServerProcess) -> tuple[int, int]:
    """Requests answered and batches run so far (the server's V2 statistics)."""
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{MODEL}/stats", timeout=10) as r:
        stats = json.load(r)["model_stats"]
    return (
        sum(int(s["inference_stats"]["success"]["count"]) for s in stats),
        sum(int(s["execution_count"]) for s in stats),
    )


def stage_of(thread: str, stack: list[str]) -> str:
    for frame in reversed(stack):  # innermost first
        if frame.startswith("Thread.run (threading.py"):  # in the thread's own target, which is C code
            return POLLER if "_poll_wrapper" in thread else IN_C
        for stage, patterns in STAGES:
            if any(p in frame for p in patterns):
                return stage
    return OTHER


def samples_by_thread(raw: Path) -> dict[int, tuple[str, collections.Counter[str]]]:
    """py-spy's raw output with --threads: ``thread (TID): name;frame;...;frame count`` per line."""
    out: dict[int, tuple[str, collections.Counter[str]]] = {}
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        head, _, frames = stack.partition(";")
        found = re.match(r"thread \((\d+)\): (.*)", head)
        if found is None or not n.isdigit():
            continue
        tid, name = int(found[1]), found[2]
        out.setdefault(tid, (name, collections.Counter()))[1][stage_of(name, frames.split(";"))] += int(n)
    return out


def split_loop_c_time(raw: Path) -> collections.Counter[str]:
    """The event loop thread's samples with native frames below its Python ones, by NATIVE."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines() if raw.exists() else []:
        stack, _, n = line.rpartition(" ")
        head, _, frames = stack.partition(";")
        if "AsyncIO Thread" not in head or not n.isdigit():
            continue
        stage = "interpreter, libc and the kernel"
        for frame in reversed(frames.split(";")):
            if " (" in frame and ".py:" in frame and "threading.py" not in frame:
                stage = "Python above the loop (counted above)"
                break
            match = next((name for name, patterns in NATIVE if any(p in frame for p in patterns)), None)
            if match:
                stage = match
                break
        counts[stage] += int(n)
    return counts


def py_spy(pid: int, out: Path, seconds: float, *flags: str) -> None:
    """``py-spy record`` of ``pid``'s threads for ``seconds`` into ``out`` (raw); its own log beside it."""
    cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--threads", *flags]
    cmd += ["--duration", str(int(seconds)), "--format", "raw", "-o", str(out)]
    with out.with_suffix(".log").open("wb") as log:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=log, timeout=seconds + 60, check=False)


def run(
    server: ServerProcess, data: Path, mode: str, concurrency: int, seconds: float, work: Path, frontend: str
) -> str:
    replica = next(p for p in server.descendants() if p.name().startswith("ray::ServeReplica"))
    assert server.proc is not None
    others = [p.pid for p in server.descendants() if p.pid != replica.pid] + [server.proc.pid]
    cmd = [
        str(TOOLS / "bin" / "perf_analyzer"), "-m", MODEL, "-x", "1", "-u", server.grpc_url, "-i", "grpc",
        "--concurrency-range", str(concurrency), "--input-data", str(data),
        "--measurement-interval", str(int((2 * seconds + 10) * 1000)), "--max-trials", "1", "-s", "100",
    ]  # fmt: skip
    if mode == "async":
        cmd.append("--async")
    env = {**os.environ, "LD_LIBRARY_PATH": str(TOOLS / "lib")}
    client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    time.sleep(4)  # past perf_analyzer's warm-up
    raw = work / f"pyspy-{frontend}-{mode}.txt"
    # Window 1, nothing attached: the rate and the CPU per request, by process and by thread.
    t0, (n0, b0) = time.monotonic(), answered(server)
    threads0, rep0 = thread_times(replica.pid), process_cpu([replica.pid])
    cli0, oth0 = process_cpu([client.pid]), process_cpu(others)
    time.sleep(seconds)
    t1, (n1, b1) = time.monotonic(), answered(server)
    threads1, rep1 = thread_times(replica.pid), process_cpu([replica.pid])
    cli1, oth1 = process_cpu([client.pid]), process_cpu(others)
    # Window 2: py-spy samples the replica's Python threads without pausing them (Python frames
    # only; a sample of a thread the kernel has waiting counts as idle and is left out). Each
    # thread's busy samples split that thread's CPU from window 1.
    py_spy(replica.pid, raw, seconds, "--nonblocking", "--rate", "250")
    # Window 3: py-spy --native (it pauses the process for each sample, so slower; only the
    # shares inside the event loop thread's C time are taken from it).
    native = work / f"pyspy-native-{frontend}-{mode}.txt"
    py_spy(replica.pid, native, seconds, "--native", "--rate", "50")
    client.wait(120)
    n = max(n1 - n0, 1)
    per = 1e6 / n
    sampled = samples_by_thread(raw)
    lines = [
        f"### `{frontend}` front end, perf_analyzer {'--async' if mode == 'async' else 'sync'}, "
        f"concurrency {concurrency}",
        "",
        f"{n:,} requests in {t1 - t0:.1f} s = {n / (t1 - t0):,.0f} req/s, {n / max(b1 - b0, 1):.1f} rows per batch. "
        f"CPU per request: replica {(rep1 - rep0) * per:,.0f} us, perf_analyzer {(cli1 - cli0) * per:,.0f} us, "
        f"the rest of the server (driver, Ray, controller) {(oth1 - oth0) * per:,.0f} us.",
        "",
        "| replica thread | us of CPU per request |",
        "|---|---|",
    ]
    by_stage: dict[str, float] = collections.defaultdict(float)
    used = []
    for tid, (kernel_name, cpu1) in threads1.items():
        us = (cpu1 - threads0.get(tid, (kernel_name, 0.0))[1]) * per
        name = sampled[tid][0] if tid in sampled else re.sub(r"\d+$", "N", kernel_name)
        used.append((us, name))
        counts = sampled[tid][1] if tid in sampled else collections.Counter()
        if not counts:  # no Python here (or never busy when sampled): the thread is its stage
            stage = "grpc core threads" if _is_grpc_core(kernel_name) else f"thread `{name}`"
            by_stage[stage if us >= 1 else "threads under 1 us each"] += us
            continue
        total = sum(counts.values())
        for stage, count in counts.items():
            by_stage[stage] += us * count / total
    merged: dict[str, float] = collections.defaultdict(float)
    for us, name in used:
        merged[re.sub(r"\d+$", "N", name)] += us
    for name, us in sorted(merged.items(), key=lambda kv: -kv[1]):
        if us >= 1:
            lines.append(f"| `{name}` | {us:,.0f} |")
    cpu = (rep1 - rep0) * per
    lines += ["", "| stage | us per request | share of the replica |", "|---|---|---|"]
    for stage, us in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {stage} | {us:,.0f} | {100 * us / cpu:.1f} % |")
    in_c = by_stage.get(IN_C, 0.0)
    split = split_loop_c_time(native)
    split.pop("Python above the loop (counted above)", None)
    if in_c and split:
        total = sum(split.values())
        lines += ["", f"The event loop thread in C ({in_c:,.0f} us), split by py-spy --native ({total:,} samples):", ""]
        lines += ["| in C on the event loop thread | us per request |", "|---|---|"]
        for stage, count in split.most_common():
            lines.append(f"| {stage} | {in_c * count / total:,.0f} |")
    return "\n".join(lines) + "\n"


def _is_grpc_core(kernel_name: str) -> bool:
    """grpc's own threads: grpc.aio's EventEngine, grpc++'s executor, timer and resolver threads."""
    return any(part in kernel_name for part in ("event_engine", "grpc", "default-execu", "resolver", "timer"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--frontends", default="aio,compiled", help="grpc_frontend values to measure, in order (before, after)"
    )
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)
    work, repo, data = reference_setup("serving-stages-")
    sections = []
    for frontend in args.frontends.split(","):
        server = ServerProcess(
            repo, work / f"serving-{frontend}.log", env={"SERVING_GRPC_FRONTEND": frontend}, metrics_every_second=False
        )
        server.start()
        try:
            for mode in ("sync", "async"):
                section = run(server, data, mode, args.concurrency, args.seconds, work, frontend)
                print(section, flush=True)
                sections.append(section)
        finally:
            server.stop()
    out = HERE / "results" / "grpc_stages.md"
    out.write_text(
        "# gRPC request cost by stage (bench/grpc_stages.py)\n\n"
        f"{os.cpu_count()} cores; model {MODEL} ({FEATURES} inputs), default model.yaml; gRPC front ends "
        f"{args.frontends} (`grpc_frontend`), one after the other in one run; "
        f"{time.strftime('%Y-%m-%d')}.\n\n" + "\n".join(sections)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""`[64, 784]` batches over gRPC against the in-process limit, each measurement next to its own limit.

`make bench` (bench/online.py) measures the limit once at its start and the batches minutes later
beside an idle PyTriton; this measures only the batches, in each given mode of `serving serve`
(Ray or standalone), each perf_analyzer window (sync, concurrency 16, zero-filled `-b 64`) right
after a fresh in-process limit (onnxruntime alone on every core, its best layout and batch size, the server idle),
and the server's CPU per thread over the window with the machine's.

    .venv/bin/python bench/batch_share.py ray standalone
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from online import BATCH_MODEL, FEATURES, MODEL, in_process_limit, perf_analyzer, reference_setup  # noqa: E402

from server_process import ServerProcess  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pids: list[int]) -> collections.Counter[str]:
    """CPU-seconds of every thread of ``pids``, by ``pid/tid name``."""
    used: collections.Counter[str] = collections.Counter()
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            used[f"{pid}/{tid} {stat[stat.index('(') + 1 : stat.rindex(')')]}"] += (
                int(fields[11]) + int(fields[12])
            ) / TICKS
    return used


def machine_busy() -> float:
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="+", choices=("ray", "standalone"))
    parser.add_argument("--windows", type=int, default=2, help="windows per mode")
    parser.add_argument("--model", choices=(BATCH_MODEL, MODEL), default=BATCH_MODEL,
                        help="the reference MLP's instance layout: 2 x 1 thread (default) or 1 x 2 threads")  # fmt: skip
    args = parser.parse_args()
    work, repo, _ = reference_setup("serving-batch-share-")
    onnx_path = repo / MODEL / "1" / "model.onnx"
    try:
        for mode in args.modes:
            server = ServerProcess(
                repo,
                work / f"{mode}.log",
                args=("--standalone",) if mode == "standalone" else (),
                metrics_every_second=False,
            )
            server.start()
            try:
                assert server.proc is not None
                root = psutil.Process(server.proc.pid)
                perf_analyzer(server.grpc_url, "grpc", args.model, "1", 16, "zero", batch=64)  # warm up
                for _ in range(args.windows):
                    _, _, limit = in_process_limit(onnx_path, FEATURES)
                    pids = [root.pid, *(c.pid for c in root.children(recursive=True))]
                    before, busy, began = thread_cpu(pids), machine_busy(), time.monotonic()
                    rows = perf_analyzer(server.grpc_url, "grpc", args.model, "1", 16, "zero", batch=64)["infer_s"]
                    seconds = time.monotonic() - began
                    busy = (machine_busy() - busy) / seconds
                    threads = thread_cpu(pids) - before
                    print(f"{mode} {args.model}: {rows:,.0f} rows/s, limit {limit:,.0f} -> {rows / limit:.2f}; machine {busy:.2f} "
                          f"cores busy, server {sum(threads.values()) / seconds:.2f}; busiest threads: "
                          + ", ".join(f"{name} {cpu / seconds:.2f}" for name, cpu in threads.most_common(4)),
                          flush=True)  # fmt: skip
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The prediction log's cost with its writer thread on a core of its own: whether the writer's
CPU, which shares the two cores with the serving threads and the client on this VM, is what puts
the log over its budget. Two standalone servers of the reference MLP, one without a log and one
logging every request; paired 1 s gRPC windows (`bench/paired.py`) first with nothing pinned,
then with every thread of both servers and of this client on CPU 0 and the logging server's
writer thread (found by name with ``py-spy dump``) alone on CPU 1, then with the writer back on
CPU 0 beside the rest.

    .venv/bin/python bench/log_writer_core.py --pairs 60
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from log_threads import processes, python_names  # noqa: E402
from online import FEATURES, MODEL, reference_setup  # noqa: E402
from paired import PairedResult, compare, infer_request  # noqa: E402

from server_process import ServerProcess, mode_args  # noqa: E402

RESULTS = HERE / "results" / "log_writer_core.md"


def writer_thread(pid: int) -> int:
    """The OS thread id of the prediction log's writer thread in ``pid``'s process tree."""
    for tid, name in python_names(pid).items():
        if name == "prediction-log":
            return tid
    raise SystemExit("the logging server has no prediction-log thread (no request logged yet?)")


def pin(pid: int, cpus: set[int], writer: int | None = None, writer_cpus: set[int] | None = None) -> None:
    """Every thread of ``pid``'s process tree on ``cpus``; ``writer`` on ``writer_cpus``."""
    for proc in processes(pid):
        for tid in map(int, os.listdir(f"/proc/{proc.pid}/task")):
            os.sched_setaffinity(tid, writer_cpus if tid == writer and writer_cpus else cpus)


def line(what: str, r: PairedResult, pairs: int) -> str:
    assert r.cpu_us is not None
    cpu = {k: sorted(v)[len(v) // 2] for k, v in r.cpu_us.items()}
    return (
        f"| {what} | **{r.ratio:.3f}** | {r.low:.3f}-{r.high:.3f} | {sum(r.rates['off']) / pairs:,.0f} | "
        f"{cpu['off']:.0f} us | {cpu['100 %']:.0f} us |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=60, help="paired 1 s windows per measure")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two CPUs")
    work, repo, _ = reference_setup("serving-writer-core-")
    off = ServerProcess(repo, work / "off.log", args=mode_args("standalone"))
    on = ServerProcess(
        repo,
        work / "on.log",
        env={"SERVING_PREDICTION_LOG__SAMPLE_RATE": "1"},
        args=(*mode_args("standalone"), "--prediction-log", str(work / "log")),
    )
    request = infer_request(MODEL, "input", FEATURES)
    rows = [
        "| threads | throughput / no log | 95 % interval | no log, calls/s | server CPU per call, no log | logged |",
        "|---|---|---|---|---|---|",
    ]
    try:
        off.start()
        on.start()
        assert off.proc is not None and on.proc is not None
        targets = {"off": off.grpc_url, "100 %": on.grpc_url}
        pids = {"off": off.proc.pid, "100 %": on.proc.pid}

        def measure(what: str) -> None:
            rows.append(line(what, compare(targets, request, pairs=args.pairs, pids=pids), args.pairs))
            print(rows[-1], flush=True)

        measure("nothing pinned (both cores shared)")
        writer = writer_thread(on.proc.pid)
        for tid in map(int, os.listdir("/proc/self/task")):  # this client, on the serving threads' core
            os.sched_setaffinity(tid, {0})
        pin(off.proc.pid, {0})
        pin(on.proc.pid, {0}, writer, {1})
        measure("the writer alone on CPU 1, the rest on CPU 0")
        measure("the same, again")
        pin(on.proc.pid, {0})
        measure("all on CPU 0, the writer too")
    finally:
        off.stop()
        on.stop()
    print("\n".join(rows))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    RESULTS.write_text(
        f"# The prediction log with its writer on a core of its own ({when})\n\n"
        f"`.venv/bin/python bench/log_writer_core.py --pairs {args.pairs}`: two standalone servers of the "
        "reference MLP, one logging every request; paired 1 s gRPC windows (grpc.aio, 16 calls in flight), "
        "the median of the pairs' ratios and its bootstrap 95 % interval; CPU per call: the median over the "
        "windows of each server's user + system time over the calls it answered.\n\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()

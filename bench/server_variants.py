"""Standalone servers of the reference MLP side by side, each a variant (another checkout's
``src`` on PYTHONPATH, the prediction log on, environment variables), measured in alternating
windows of batch-1 gRPC calls (grpc.aio, 16 in flight; the order rotated every round). Per
variant: calls per second (batch-1 by default: ``--rows``, ``--model``; ``--perf-analyzer [sync|async]``
measures each window with perf_analyzer instead), the server's CPU per call (user + system, from /proc), its event loop
thread's, and page faults per call, the medians over the rounds; and the median ratio of its rate
to the first variant's in the same round. CPU and faults per call move less than the rate on a VM
whose speed drifts. A variant is NAME=[SRC][:log][:VAR~VALUE,...]:

    git archive HEAD~1 src | tar -x -C /tmp/old    # (and copy the compiled front end into it)
    .venv/bin/python bench/server_variants.py off=/tmp/old/src old=/tmp/old/src:log new=:log \\
        new-mi=:log:MIMALLOC_PURGE_DELAY~-1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from online import BATCH_MODEL, FEATURES, MODEL, perf_analyzer, reference_setup  # noqa: E402
from paired import calls_per_second  # noqa: E402

from serving.protocol._pb import inference_pb2 as pb  # noqa: E402
from serving.protocol._pb import inference_pb2_grpc  # noqa: E402

from server_process import ServerProcess, mode_args  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    rate: float
    cpu_us: float
    loop_us: float
    faults: float


def usage(pid: int) -> tuple[float, float, int]:
    """(CPU seconds of every thread, of the main thread, minor faults of every thread)."""
    cpu = 0.0
    faults = 0
    main = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended
            continue
        seconds = (int(fields[11]) + int(fields[12])) / TICKS
        cpu += seconds
        faults += int(fields[7])
        if int(tid) == pid:
            main = seconds
    return cpu, main, faults


async def window(url: str, request: pb.ModelInferRequest, seconds: float) -> float:
    channel = grpc.aio.insecure_channel(url)
    try:
        return await calls_per_second(inference_pb2_grpc.GRPCInferenceServiceStub(channel), request, 16, seconds)
    finally:
        await channel.close()


def server(spec: str, repo: Path, work: Path, k: int) -> ServerProcess:
    src, _, rest = spec.partition(":")
    log, _, extra = rest.partition(":")
    env = {"PYTHONPATH": src} if src else {}
    env.update(dict(kv.split("~", 1) for kv in extra.split(",") if kv))
    args = mode_args("standalone")
    if log == "log":
        env["SERVING_PREDICTION_LOG__SAMPLE_RATE"] = "1"
        args = (*args, "--prediction-log", str(work / f"log-{k}"))
    return ServerProcess(repo, work / f"{k}.log", env=env, args=args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="NAME=[SRC][:log][:VAR~VALUE,...]")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="one window")
    parser.add_argument("--model", default=MODEL, help=f"{MODEL} (batch-1 layout) or {BATCH_MODEL}")
    parser.add_argument("--rows", type=int, default=1, help="rows a request")
    parser.add_argument(
        "--perf-analyzer", nargs="?", const="sync", choices=("sync", "async"),
        help="drive each window with perf_analyzer (16 clients, zero-filled, its stable window: "
        "calls/s; CPU per call over the whole run) instead of grpc.aio",
    )  # fmt: skip
    args = parser.parse_args()
    work, repo, _ = reference_setup("serving-variants-")
    specs = dict(v.split("=", 1) for v in args.variants)
    servers = {name: server(spec, repo, work, k) for k, (name, spec) in enumerate(specs.items())}
    request = pb.ModelInferRequest(model_name=args.model)
    request.inputs.add(name="input", datatype="FP32", shape=[args.rows, FEATURES])
    request.raw_input_contents.append(np.zeros((args.rows, FEATURES), np.float32).tobytes())
    names = list(servers)
    windows: dict[str, list[Window]] = {n: [] for n in names}
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():  # warm up: connections, first batches, the first log files
            asyncio.run(window(s.grpc_url, request, 5.0))
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order[::-1] if r % 2 else order:
                s = servers[name]
                assert s.proc is not None
                before = usage(s.proc.pid)
                began = time.monotonic()
                if args.perf_analyzer:
                    extra = ("--async",) if args.perf_analyzer == "async" else ()
                    measured = perf_analyzer(s.grpc_url, "grpc", args.model, "1", 16, "zero", args.rows, extra)
                    rate = measured["infer_s"] / args.rows
                else:
                    rate = asyncio.run(window(s.grpc_url, request, args.seconds))
                calls = rate * (time.monotonic() - began)
                after = usage(s.proc.pid)
                cpu, loop, faults = ((a - b) / calls for a, b in zip(after, before))
                windows[name].append(Window(rate, cpu * 1e6, loop * 1e6, faults))
            print(f"round {r + 1}: " + "  ".join(f"{n} {windows[n][-1].rate:,.0f}/s" for n in names), flush=True)
    finally:
        for s in servers.values():
            s.stop()
    first = names[0]
    print(f"\n| variant | calls/s | server CPU per call | event loop thread | page faults per call | rate / {first} |")
    print("|---|---|---|---|---|---|")
    for n in names:
        w = windows[n]
        ratio = statistics.median(a.rate / b.rate for a, b in zip(w, windows[first]))
        print(
            f"| {n} | {statistics.median(x.rate for x in w):,.0f} | {statistics.median(x.cpu_us for x in w):.1f} us "
            f"| {statistics.median(x.loop_us for x in w):.1f} us | {statistics.median(x.faults for x in w):.2f} "
            f"| {ratio:.3f} |"
        )


if __name__ == "__main__":
    main()

"""Overload (`make bench-overload`): a real server with one compute-bound model, first driven at
the concurrency where its throughput peaks, then at 10x that many closed-loop clients. Prints the
peak, the throughput under overload and its ratio, how fast refused requests are answered (503 +
Retry-After), and the largest queue depth the server reported (bounded by max_queue_size).
Writes bench/results/overload.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from metrics_scrape import scrape  # noqa: E402

from models import slow_model  # noqa: E402
from server_process import ServerProcess  # noqa: E402

SIZE = 1024
QUEUE = 32
BODY = json.dumps(
    {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, SIZE], "data": [0.5] * SIZE}]}, separators=(",", ":")
).encode()


async def drive(url: str, clients: int, seconds: float) -> dict[str, list[float]]:
    """``clients`` closed-loop clients, one keep-alive connection each, for ``seconds``: latencies
    by status. A raw HTTP/1.1 client (a pre-encoded request, the answer's head parsed by hand):
    ~10x cheaper per request than httpx, so that on a 2-core machine the load generator does not
    take the cores the server is measured on."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    out: dict[str, list[float]] = {}
    deadline = time.monotonic() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    key = head[9:12].decode() + ("+retry-after" if b"retry-after" in head.lower() else "")
                    if b"connection: close" in head.lower():
                        writer.close()
                        reader, writer = await asyncio.open_connection(host, int(port))
                except (OSError, asyncio.IncompleteReadError) as exc:
                    key = type(exc).__name__
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                out.setdefault(key, []).append(time.perf_counter() - began)
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(clients)))
    return out


def queue_peak(server: ServerProcess) -> float:
    return max(
        (s[2] for s in scrape(server.metrics_url) if s[0] == "ray_serving_queue_depth" and s[1].get("model") == "slow"),
        default=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    slow_model(work / "repo", size=SIZE, repeats=200, max_batch_size=4, max_queue_size=QUEUE)
    server = ServerProcess(work / "repo", work / "server.log", env={"RAY_metrics_report_interval_ms": "1000"})
    server.start()
    url = f"http://{server.http_url}"
    try:
        asyncio.run(drive(url, 4, 2.0))  # warm
        peak, best_c = 0.0, 0
        for c in (2, 4, 8, 16):
            r = asyncio.run(drive(url, c, args.seconds))
            rate = len(r.get("200", [])) / args.seconds
            print(f"concurrency {c:3d}: {rate:8,.0f} req/s served", flush=True)
            if rate > peak:
                peak, best_c = rate, c
        over_c = 10 * best_c
        sampled: list[float] = []
        result: dict[str, list[float]] = {}

        me = psutil.Process()
        tree = [psutil.Process(server.proc.pid), *server.descendants()] if server.proc else []
        cpu0 = (sum(me.cpu_times()[:2]), sum(sum(p.cpu_times()[:2]) for p in tree))

        async def overload() -> None:
            task = asyncio.ensure_future(drive(url, over_c, args.seconds))
            while not task.done():
                await asyncio.sleep(1.0)
                sampled.append(await asyncio.to_thread(queue_peak, server))
            result.update(task.result())

        asyncio.run(overload())
        cpu1 = (sum(me.cpu_times()[:2]), sum(sum(p.cpu_times()[:2]) for p in tree if p.is_running()))
        cpu_client, cpu_server = (cpu1[0] - cpu0[0]) / args.seconds, (cpu1[1] - cpu0[1]) / args.seconds
    finally:
        server.stop()
    served = len(result.get("200", [])) / args.seconds
    refused = result.get("503+retry-after", [])
    other = {k: len(v) for k, v in result.items() if k not in ("200", "503+retry-after")}
    q = statistics.quantiles(refused, n=100) if len(refused) >= 100 else []
    lines = [
        f"# make bench-overload ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)",
        "",
        f"Model: {SIZE}-wide chain of 200 matmuls, max_batch_size 4, max_queue_size {QUEUE}; closed-loop raw HTTP/1.1 clients "
        f"for {args.seconds:g} s per point, all against one replica.",
        "",
        f"- peak: {peak:,.0f} req/s at concurrency {best_c}",
        f"- overload, {over_c} clients (10x): {served:,.0f} req/s served = **{served / peak:.2f}** of peak (target >= 0.9)",
        f"- refused: {len(refused):,} answers 503 with Retry-After; latency p50 {statistics.median(refused) * 1000:.1f} ms, "
        f"p99 {q[98] * 1000 if q else max(refused, default=0) * 1000:.1f} ms (target < 50 ms)"
        if refused
        else "- refused: none",
        f"- other outcomes: {other or 'none'}",
        f"- queue depth reported during overload (per second): max {max(sampled, default=0):.0f} of {QUEUE}",
        f"- CPU during overload (of {os.cpu_count()} cores): load generator {cpu_client:.2f} cores, server "
        f"(driver, Ray, replica) {cpu_server:.2f} cores",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "overload.md").write_text(text)


if __name__ == "__main__":
    main()

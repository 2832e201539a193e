"""What the lifecycle features cost on the request path, measured in-process (the service
called directly, no HTTP/gRPC, no Ray: the largest share they can take), A/B interleaved:

* drift watch: throughput of 16 concurrent callers on the demo digits model (64 features,
  the default ``drift.sample_rate`` 0.05) with the watch on vs off;
* shadow: the latency a lone client sees with v2 shadowing v1 vs no shadow, in-process and
  over HTTP from a real server (`serving serve`, local Ray, one replica; one keep-alive client).

``python bench/lifecycle_cost.py [--seconds 3] [--rounds 3]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from serving.control.tools import profile_version
from serving.demo import build_demo_dataset, build_digits
from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, Tensor


def request(version: str = "1") -> InferenceRequest:
    x = np.random.default_rng(0).random((1, 64)).astype(np.float32)
    return InferenceRequest("digits", [Tensor("input", "FP32", x)], model_version=version)


async def throughput(svc: LocalInferenceService, seconds: float, concurrency: int = 16) -> float:
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await svc.infer(request())
            done += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done / seconds


async def latencies(svc: LocalInferenceService, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await svc.infer(request())
        out.append(time.perf_counter() - t)
        await asyncio.sleep(0)  # let a shadow copy run between requests, as it would between arrivals
    return out


def repo_with(root: Path, drift: dict[str, object]) -> Path:
    config_path = root / "digits" / "model.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["drift"] = drift
    config["gates"] = {"require_evaluation": False}
    config_path.write_text(yaml.safe_dump(config))
    return root


async def main(seconds: float, rounds: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lifecycle-cost-"))
    try:
        base = tmp / "on"
        build_digits(base)
        data = build_demo_dataset(tmp / "data")
        profile_version(base, "digits:1", [str(data / "split=train")])
        repo_with(base, {"enabled": True})
        shutil.copytree(base, tmp / "off")
        repo_with(tmp / "off", {"enabled": False})
        on = LocalInferenceService.from_repository(tmp / "on")
        off = LocalInferenceService.from_repository(tmp / "off")
        for svc in (on, off):
            svc.start_watch(scan_repository=False)
        assert on.registry.get("digits", "1").drift is not None and off.registry.get("digits", "1").drift is None
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(rounds):
            for name, svc in (("off", off), ("on", on)):
                rates[name].append(await throughput(svc, seconds))
        shadow_p50: dict[str, list[float]] = {"none": [], "v2": []}
        assert on.admin is not None
        for _ in range(rounds):
            for name, version in (("none", None), ("v2", 2)):
                await on.admin.shadow("digits", version, "bench")
                lat = await latencies(on, 2000)
                shadow_p50[name].append(statistics.median(lat) * 1e6)
        await on.admin.shadow("digits", None, "bench")
        off_rate, on_rate = statistics.median(rates["off"]), statistics.median(rates["on"])
        print("| measurement | off | on | on/off |")
        print("|---|---|---|---|")
        print(
            f"| drift watch, requests/s (16 callers, median of {rounds}) | {off_rate:,.0f} | {on_rate:,.0f} | "
            f"{on_rate / off_rate:.3f} |"
        )
        none, v2 = statistics.median(shadow_p50["none"]), statistics.median(shadow_p50["v2"])
        print(
            f"| shadow v2, client p50 latency us (1 caller, median of {rounds}) | {none:.0f} | {v2:.0f} | "
            f"{v2 / none:.3f} |"
        )
        await on.close()
        await off.close()
        for pace_s, (server_none, server_v2) in http_shadow_latency(tmp / "on", rounds).items():
            how = "back to back" if not pace_s else f"one request every {pace_s * 1000:g} ms"
            print(
                f"| shadow v2, client p50 latency us over HTTP (real server, 1 keep-alive client, {how}) | "
                f"{server_none:.0f} | {server_v2:.0f} | {server_v2 / server_none:.3f} |"
            )
        print(
            f"\nrounds: drift off {[round(r) for r in rates['off']]}, on {[round(r) for r in rates['on']]}; "
            f"shadow p50 none {[round(x) for x in shadow_p50['none']]}, v2 {[round(x) for x in shadow_p50['v2']]}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_shadow_latency(repo: Path, rounds: int, n: int = 2000) -> dict[float, tuple[float, float]]:
    """Median over rounds of the p50 a lone HTTP client sees, shadow off vs v2 shadowing v1:
    back to back, and paced at one request every 2 ms."""
    ports = [str(_free_port()) for _ in range(3)]
    cmd = [str(Path(sys.executable).parent / "serving"), "serve", "--repository", str(repo), "--http-port", ports[0],
           "--grpc-port", ports[1], "--metrics-port", ports[2]]  # fmt: skip
    log = open(repo.parent / "server.log", "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while b"serving is ready" not in (repo.parent / "server.log").read_bytes():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((repo.parent / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        conn = http.client.HTTPConnection("127.0.0.1", int(ports[0]), timeout=30)
        x = np.random.default_rng(0).random(64).round(3).tolist()
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x}]})

        def call(method: str, path: str, payload: str) -> bytes:
            conn.request(method, path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200, data
            return data

        out = {}
        for pace_s in (0.0, 0.002):
            p50: dict[str, list[float]] = {"none": [], "v2": []}
            for _ in range(rounds):
                for name, version in (("none", None), ("v2", 2)):
                    call("POST", "/v2/admin/models/digits/shadow", json.dumps({"version": version}))
                    lat = []
                    for _ in range(n):
                        t = time.perf_counter()
                        call("POST", "/v2/models/digits/versions/1/infer", body)
                        lat.append(time.perf_counter() - t)
                        if pace_s:
                            time.sleep(max(0.0, pace_s - (time.perf_counter() - t)))
                    p50[name].append(statistics.median(lat) * 1e6)
            print(
                f"HTTP rounds, a request every {pace_s * 1000:g} ms: shadow p50 none "
                f"{[round(v) for v in p50['none']]}, v2 {[round(v) for v in p50['v2']]}"
            )
            out[pace_s] = (statistics.median(p50["none"]), statistics.median(p50["v2"]))
        conn.close()
        return out
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds))

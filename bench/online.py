"""Online benchmark: perf_analyzer against `serving serve`, next to the in-process limit.

For the reference MLP (784->1024->1024->10, FP32) and the demo digits model, at concurrency
1, 16 and 64, batch-1 requests, over HTTP (binary tensors) and gRPC, through the HAProxy fast
path and Serve's default Python proxy. The limit is onnxruntime in this process at the best
batch size, measured in the same run. Prints a table; writes bench/results/online.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from serving.demo import build_demo_repository, build_reference_mlp, digits_data  # noqa: E402

from server_process import ServerProcess  # noqa: E402

TOOLS = HERE / ".tools"
MODELS = {"reference_mlp": 784, "digits": 64}


def in_process_limit(model_path: Path, features: int, threads: int, seconds: float = 2.0) -> tuple[int, float]:
    """(best batch size, rows/s) of onnxruntime alone."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    best = (1, 0.0)
    for batch in (1, 8, 32, 64, 128):
        x = np.random.default_rng(0).random((batch, features), dtype=np.float32)
        sess.run(None, {name: x})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            sess.run(None, {name: x})
            n += batch
        rate = n / (time.perf_counter() - start)
        if rate > best[1]:
            best = (batch, rate)
    return best


def in_process_service(repo: Path, model: str, features: int, concurrency: int, requests: int = 3000) -> float:
    """Requests/s through serving's own code alone: gRPC adapter -> service -> batcher -> model,
    with ``concurrency`` callers in one event loop and no network or Ray."""
    import asyncio

    from serving.protocol import grpc_v2
    from serving.protocol._pb import inference_pb2 as pb
    from serving.service import LocalInferenceService

    class Context:
        def set_code(self, code: object) -> None:
            raise RuntimeError(f"request failed: {code}")

        def set_details(self, details: str) -> None:
            pass

    async def run() -> float:
        service = LocalInferenceService.from_repository(repo)
        adapter = grpc_v2.GrpcAdapter(service)
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype="FP32", shape=[1, features])
        request.raw_input_contents.append(np.random.default_rng(2).random((1, features), dtype=np.float32).tobytes())
        context = Context()

        async def caller(n: int) -> None:
            for _ in range(n):
                await adapter.ModelInfer(request, context)

        await asyncio.gather(*[caller(5) for _ in range(concurrency)])
        each = max(requests // concurrency, 1)
        start = time.perf_counter()
        await asyncio.gather(*[caller(each) for _ in range(concurrency)])
        rate = each * concurrency / (time.perf_counter() - start)
        await service.registry.close()
        return rate

    return asyncio.run(run())


def input_data(path: Path, features: int) -> Path:
    x = digits_data()[0][:16] if features == 64 else np.random.default_rng(1).random((16, features), dtype=np.float32)
    path.write_text(json.dumps({"data": [{"input": row.astype(float).tolist()} for row in x]}))
    return path


def perf_analyzer(url: str, protocol: str, model: str, version: str, concurrency: int, data: Path) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [
            str(TOOLS / "bin" / "perf_analyzer"),
            "-m", model, "-x", version, "-u", url, "-i", protocol, "-b", "1",
            "--concurrency-range", str(concurrency),
            "--input-data", str(data),
            "--measurement-interval", "3000", "-s", "50", "--max-trials", "8",
            "-f", out.name,
        ]  # fmt: skip
        if protocol == "http":
            cmd += ["--input-tensor-format", "binary", "--output-tensor-format", "binary"]
        env = {**os.environ, "LD_LIBRARY_PATH": str(TOOLS / "lib")}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        if not Path(out.name).read_text().strip():
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            print(f"perf_analyzer failed ({result.returncode}): {' | '.join(tail)}", flush=True)
            return {"error": 1.0, "infer_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
        row = next(csv.DictReader(io.StringIO(Path(out.name).read_text())))
    return {
        "infer_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


class FloorProcess:
    """bench/floor_app.py in a subprocess, stopped by PID."""

    def __init__(self, repository: Path, log_path: Path, default_proxy: bool) -> None:
        from server_process import free_port

        self.http_port, self.grpc_port = free_port(), free_port()
        cmd = [sys.executable, str(HERE / "floor_app.py"), "--repository", str(repository)]
        cmd += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        cmd += ["--default-proxy"] if default_proxy else []
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
            "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        }
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 240
        while "ready" not in log_path.read_text(errors="replace").splitlines():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"floor app did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        self.http_url, self.grpc_url = f"127.0.0.1:{self.http_port}", f"127.0.0.1:{self.grpc_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def newest_version(repo: Path, model: str) -> str:
    return str(max(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit()))


def run_matrix(
    label: str, path: str, http_url: str, grpc_url: str, work: Path, concurrency: list[int]
) -> dict[tuple[str, str, int], dict[str, float]]:
    results = {}
    for model, features in MODELS.items():
        data = input_data(work / f"{model}.json", features)
        version = newest_version(work / "repo", model)
        for protocol, url in (("grpc", grpc_url), ("http", http_url)):
            for c in concurrency:
                r = perf_analyzer(url, protocol, model, version, c, data)
                results[(model, protocol, c)] = r
                print(
                    f"[{path} {label:7s}] {model:14s} {protocol:4s} c={c:<3d} {r['infer_s']:9,.0f} infer/s  "
                    f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms",
                    flush=True,
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--paths", nargs="+", default=["fast", "default"], choices=["fast", "default"])
    parser.add_argument("--no-floor", action="store_true", help="skip the Serve floor (constant-answer app)")
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)

    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    repo = work / "repo"
    build_demo_repository(repo)
    build_reference_mlp(repo)
    limits = {}
    for model, features in MODELS.items():
        newest = newest_version(repo, model)
        threads = 2 if model == "reference_mlp" else 1
        limits[model] = in_process_limit(repo / model / str(newest) / "model.onnx", features, threads)
        print(
            f"in-process limit {model}: {limits[model][1]:,.0f} rows/s at batch {limits[model][0]} ({threads} threads)"
        )
    service_rates = {}
    for model, features in MODELS.items():
        for c in args.concurrency:
            service_rates[(model, c)] = in_process_service(repo, model, features, c)
            print(f"serving in-process (no network, no Ray) {model} c={c}: {service_rates[(model, c)]:,.0f} req/s")

    lines = [
        "| path | model | protocol | concurrency | infer/s | p50 ms | p99 ms | Serve floor infer/s | of floor "
        "| serving in-process req/s | in-process limit rows/s (batch) | of limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in args.paths:
        server = ServerProcess(
            repo, work / f"server-{path}.log", env={"SERVING_FAST_PATH": str(path == "fast").lower()}
        )
        began = time.monotonic()
        server.start()
        print(f"[{path}] server ready in {time.monotonic() - began:.1f}s")
        try:
            real = run_matrix("serving", path, server.http_url, server.grpc_url, work, args.concurrency)
        finally:
            server.stop()
        floor: dict[tuple[str, str, int], dict[str, float]] = {}
        if not args.no_floor:
            fp = FloorProcess(repo, work / f"floor-{path}.log", default_proxy=path == "default")
            try:
                floor = run_matrix("floor", path, fp.http_url, fp.grpc_url, work, args.concurrency)
            finally:
                fp.stop()
        for (model, protocol, c), r in real.items():
            batch, limit = limits[model]
            f = floor.get((model, protocol, c), {}).get("infer_s", 0.0)
            lines.append(
                f"| {path} | {model} | {protocol} | {c} | {r['infer_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                f"{f:,.0f} | {r['infer_s'] / f if f else 0:.2f} | {service_rates[(model, c)]:,.0f} | "
                f"{limit:,.0f} ({batch}) | {r['infer_s'] / limit:.4f} |"
            )
    table = "\n".join(lines)
    print("\n" + table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "online.md").write_text(
        f"# make bench ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
        "Batch-1 requests from perf_analyzer (tritonclient 2.51.0); HTTP uses binary tensors. "
        "'Serve floor' is bench/floor_app.py on the same ingress path, answering a precomputed response. "
        "'Serving in-process' is serving's own code (gRPC adapter, service, batcher, model) in one event loop "
        "without network or Ray. 'In-process limit' is onnxruntime alone at its best batch size, in the same run.\n\n"
        f"{table}\n"
    )


if __name__ == "__main__":
    main()

"""Online benchmark, side by side in one run on the reference MLP (784->1024->1024->10, FP32):
`serving serve`, PyTriton (Triton's C++ front end, bench/pytriton_server.py), a bare grpc.aio
echo (the Python floor, bench/echo_floor.py) and onnxruntime in-process (the limit).

perf_analyzer (tritonclient 2.51.0) sends batch-1 requests at concurrency 1, 16 and 64 over
gRPC in both of its client modes (sync: one thread per slot; --async: calls multiplexed on one
channel, as gRPC applications do) and HTTP (binary tensors), then [64, 784] batches over gRPC. Prints every rate and the
ratios serving / PyTriton, serving / floor and serving / limit; writes bench/results/online.md.
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
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from serving.config.model import load_model_config  # noqa: E402
from serving.demo import REFERENCE_LAYOUTS, build_reference_mlp  # noqa: E402

from server_process import ServerProcess  # noqa: E402

TOOLS = HERE / ".tools"
MODELS = {"reference_mlp": 784, "digits": 64}


def in_process_limit(model_path: Path, features: int, seconds: float = 4.0) -> tuple[str, int, float]:
    """(layout, best batch size, rows/s) of onnxruntime alone on every core, at its best of two
    layouts: one caller with an intra-op thread per core, or a caller per core with one thread
    each on one shared session (what ``instance: {count: N, num_threads: 1}`` runs)."""
    cores = os.cpu_count() or 1
    best = ("", 1, 0.0)
    for callers, threads in ((1, cores), (cores, 1)):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        for batch in (1, 8, 32, 64, 128):
            rate = _rows_per_second(sess, np.random.default_rng(0).random((batch, features), dtype=np.float32),
                                    callers, seconds / 10)  # fmt: skip
            if rate > best[2]:
                best = (f"{callers} caller(s) x {threads} thread(s)", batch, rate)
    return best


def _rows_per_second(sess: ort.InferenceSession, x: np.ndarray, callers: int, seconds: float) -> float:
    """Rows/s of ``callers`` threads calling ``sess.run`` on ``x`` for ``seconds``."""
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    counts = [0] * callers
    until = time.perf_counter() + seconds

    def call(i: int) -> None:
        while time.perf_counter() < until:
            sess.run(None, {name: x})
            counts[i] += x.shape[0]

    start = time.perf_counter()
    workers = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def in_process_service(repo: Path, model: str, features: int, concurrency: int, requests: int = 3000) -> float:
    """Requests/s through serving's own code alone: gRPC adapter -> service -> batcher -> model,
    with ``concurrency`` callers in one event loop and no network or Ray."""
    import asyncio

    from serving.protocol import grpc_v2
    from serving.protocol._pb import inference_pb2 as pb
    from serving.service.local import LocalInferenceService

    class Context:
        def set_code(self, code: object) -> None:
            raise RuntimeError(f"request failed: {code}")

        def set_details(self, details: str) -> None:
            pass

        def set_trailing_metadata(self, metadata: object) -> None:
            pass

        def invocation_metadata(self) -> tuple[()]:
            return ()

        def time_remaining(self) -> None:
            return None

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
    x = np.random.default_rng(1).random((16, features), dtype=np.float32)
    path.write_text(json.dumps({"data": [{"input": row.astype(float).tolist()} for row in x]}))
    return path


def reference_setup(prefix: str) -> tuple[Path, Path, Path]:
    """A fresh folder holding the reference MLP's repository and perf_analyzer's input data:
    (folder, repository, input data)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    build_reference_mlp(work / "repo", layouts=REFERENCE_LAYOUTS)
    return work, work / "repo", input_data(work / "input.json", FEATURES)


def perf_analyzer(
    url: str,
    protocol: str,
    model: str,
    version: str,
    concurrency: int,
    data: Path | str | None,
    batch: int = 1,
    extra: tuple[str, ...] = (),
) -> dict[str, float]:
    """One perf_analyzer measurement; ``data``: a JSON file, or perf_analyzer's "zero" / "random"
    (None); ``extra``: more flags (``--async``)."""
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [
            str(TOOLS / "bin" / "perf_analyzer"),
            "-m", model, "-x", version, "-u", url, "-i", protocol, "-b", str(batch),
            "--concurrency-range", str(concurrency),
            "--input-data", str(data or "random"),
            "--measurement-interval", "3000", "-s", "50", "--max-trials", "12",
            "-f", out.name, *extra,
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


class Peer:
    """A server under test in a subprocess, ready when it prints "ready"; stopped by PID."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
            )
        deadline = time.monotonic() + 240
        while "ready" not in log_path.read_text(errors="replace").splitlines():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{cmd[:2]} did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def libpython_dir(python: str) -> str:
    """Where ``python``'s own libpython lives. Triton's Python-backend stub links libpython3.11
    by name; without this it loads the system's (Debian 3.11.2) under a venv whose stdlib is
    another 3.11 (pyenv 3.11.7), and the model fails to load in multiprocessing."""
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


MODEL = "reference_mlp"
BATCH_MODEL = "reference_mlp_batch"
"""The same MLP with the instance layout for large requests (``serving.demo.REFERENCE_LAYOUTS``)."""
FEATURES = 784


def cells(concurrency: list[int]) -> list[tuple[str, int]]:
    """What is measured: [64, 784] batches at 16 first, the nearest to the in-process limit they are
    divided by (measured just before the servers start: this VM's speed drifts by a quarter within
    minutes, and the limit is measured again at the end to show it), then each protocol at each
    concurrency."""
    return [("grpc-batch64", 16)] + [(p, c) for p in ("grpc", "grpc-async", "http") for c in concurrency]


def measure_cell(label: str, urls: dict[str, str], cell: tuple[str, int], data: Path) -> dict[str, float]:
    """One perf_analyzer measurement of ``cell`` against one server (``urls``: grpc and http)."""
    protocol, c = cell
    if protocol == "grpc-batch64":
        # Zero-filled batches: perf_analyzer's random bytes hold NaN and inf, which serving answers with
        # 400 (only finite numbers are accepted); the MLP's work is the same for any finite values.
        r = perf_analyzer(urls["grpc"], "grpc", BATCH_MODEL, "1", c, "zero", batch=64)
        print(f"[{label:8s}] grpc [64,784] batches c={c} {r['infer_s']:9,.0f} rows/s", flush=True)
        return r
    wire, extra = ("grpc", ("--async",)) if protocol == "grpc-async" else (protocol, ())
    r = perf_analyzer(urls["http" if wire == "http" else "grpc"], wire, MODEL, "1", c, data, extra=extra)
    print(
        f"[{label:8s}] {protocol:10s} c={c:<3d} {r['infer_s']:9,.0f} infer/s  "
        f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms",
        flush=True,
    )
    return r


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)
    subprocess.run(["bash", str(HERE / "pytriton_env.sh")], check=True)
    from server_process import free_port

    work, repo, data = reference_setup("serving-bench-")
    onnx_path = repo / MODEL / "1" / "model.onnx"
    layout, batch, limit = in_process_limit(onnx_path, FEATURES)
    print(f"in-process limit: {limit:,.0f} rows/s at batch {batch} (onnxruntime, {layout})", flush=True)
    service_rate = in_process_service(repo, MODEL, FEATURES, 64)
    print(f"serving's own code in-process (no network, no Ray) c=64: {service_rate:,.0f} req/s", flush=True)

    # Both servers run from the start, and each cell is measured on one then the other, the order
    # alternated cell by cell: this VM's speed drifts by a quarter within minutes, and measured
    # one server after the other, the drift fell on the ratio.
    results: dict[str, dict[tuple[str, int], dict[str, float]]] = {"serving": {}, "pytriton": {}}
    server = ServerProcess(repo, work / "serving.log", metrics_every_second=False)
    began = time.monotonic()
    server.start()
    print(f"[serving ] ready in {time.monotonic() - began:.1f}s", flush=True)
    try:
        http, grpc_port, metrics = free_port(), free_port(), free_port()
        began = time.monotonic()
        pytriton_python = str(HERE / ".pytriton/bin/python")
        # the peer serves both names with the same instance layouts
        instance = load_model_config(repo / MODEL / "model.yaml").instance
        wide = load_model_config(repo / BATCH_MODEL / "model.yaml").instance
        triton = Peer(
            [pytriton_python, str(HERE / "pytriton_server.py"), "--model", str(onnx_path),
             "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics),
             "--instances", str(instance.count), "--threads", str(instance.num_threads),
             "--also", f"{BATCH_MODEL}:{wide.count}:{wide.num_threads}"],
            work / "pytriton.log",
            env={"LD_LIBRARY_PATH": libpython_dir(pytriton_python)},
        )  # fmt: skip
        print(f"[pytriton] ready in {time.monotonic() - began:.1f}s", flush=True)
        urls = {
            "serving": {"grpc": server.grpc_url, "http": server.http_url},
            "pytriton": {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http}"},
        }
        try:
            for i, cell in enumerate(cells(args.concurrency)):
                for label in ("serving", "pytriton") if i % 2 == 0 else ("pytriton", "serving"):
                    results[label][cell] = measure_cell(label, urls[label], cell, data)
        finally:
            triton.stop()
    finally:
        server.stop()
    floor_port = free_port()
    floor = Peer(
        [sys.executable, str(HERE / "echo_floor.py"), "--repository", str(repo), "--grpc-port", str(floor_port)],
        work / "floor.log",
    )
    try:
        results["floor"] = {}
        for mode, extra in (("grpc", ()), ("grpc-async", ("--async",))):
            for c in args.concurrency:
                r = results["floor"][(mode, c)] = perf_analyzer(
                    f"127.0.0.1:{floor_port}", "grpc", MODEL, "1", c, data, extra=extra
                )
                print(f"[floor   ] {mode:10s} c={c:<3d} {r['infer_s']:9,.0f} infer/s", flush=True)
    finally:
        floor.stop()
    _, _, limit_after = in_process_limit(onnx_path, FEATURES)
    print(f"in-process limit again, at the end: {limit_after:,.0f} rows/s", flush=True)

    s, t, f = results["serving"], results["pytriton"], results["floor"]
    lines = [
        "| protocol | concurrency | serving infer/s | p50 ms | PyTriton infer/s | p50 ms | floor infer/s "
        "| serving / PyTriton | serving / floor | serving / limit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for protocol in ("grpc", "grpc-async", "http"):
        for c in args.concurrency:
            a, b = s[(protocol, c)], t[(protocol, c)]
            fl = f.get((protocol, c), {}).get("infer_s", 0.0)
            lines.append(
                f"| {protocol} | {c} | {a['infer_s']:,.0f} | {a['p50_ms']:.2f} | {b['infer_s']:,.0f} | "
                f"{b['p50_ms']:.2f} | {fl:,.0f} | {ratio(a['infer_s'], b['infer_s'])} | {ratio(a['infer_s'], fl)} | "
                f"{a['infer_s'] / limit:.3f} |"
            )
    summary = []
    targets = {"grpc": "2x", "grpc-async": "2x", "http": "1.8x"}  # issue 24
    for protocol in ("grpc", "grpc-async", "http"):
        best_s = max(s[(protocol, c)]["infer_s"] for c in args.concurrency)
        best_t = max(t[(protocol, c)]["infer_s"] for c in args.concurrency)
        summary.append(
            f"- {protocol} best: serving {best_s:,.0f} vs PyTriton {best_t:,.0f} infer/s = "
            f"**{ratio(best_s, best_t)}x** (target {targets[protocol]}); p50 at c=1: serving "
            f"{s[(protocol, args.concurrency[0])]['p50_ms']:.2f} ms, PyTriton {t[(protocol, args.concurrency[0])]['p50_ms']:.2f} ms"
        )
    sb, tb = s[("grpc-batch64", 16)]["infer_s"], t[("grpc-batch64", 16)]["infer_s"]
    summary.append(
        f"- [64, 784] batches over gRPC, c=16: serving {sb:,.0f} rows/s = **{sb / limit:.2f}** of the in-process "
        f"limit (target 0.7); PyTriton {tb:,.0f} rows/s = {tb / limit:.2f}. Measured first, ~30 s after the limit; "
        f"the limit measured again at the end of the run: {limit_after:,.0f} rows/s"
    )
    summary.append(f"- serving's own code in-process (no network, no Ray), c=64: {service_rate:,.0f} req/s")
    table = "\n".join(lines) + "\n\n" + "\n".join(summary)
    print("\n" + table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "online.md").write_text(
        f"# make bench ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n"
        "Reference MLP 784->1024->1024->10 FP32, perf_analyzer (tritonclient 2.51.0), batch-1 requests; gRPC "
        "sync (one thread per slot) and `grpc-async` (perf_analyzer --async: calls multiplexed on one channel); HTTP "
        "uses binary tensors. Both servers run the model with the same instance layouts: "
        f"{instance.count} instance(s) x {instance.num_threads} onnxruntime thread(s) for batch-1 requests "
        f"(`{MODEL}`), {wide.count} x {wide.num_threads} for the [64, 784] batches (`{BATCH_MODEL}`, the same "
        "weights); PyTriton 0.7.0: dynamic "
        "batching up to 128 rows / 500 us, onnxruntime in its @batch callables. Floor: one bare grpc.aio process answering a precomputed response. "
        f"Limit: onnxruntime in-process, {limit:,.0f} rows/s at batch {batch} ({layout}). All in one run: serving "
        "and PyTriton run side by side, each row measured on one then the other (the order alternated row by "
        "row); the floor after them.\n\n"
        f"{table}\n"
    )


if __name__ == "__main__":
    main()

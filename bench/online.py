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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def input_data(path: Path, features: int) -> Path:
    x = digits_data()[0][:16] if features == 64 else np.random.default_rng(1).random((16, features), dtype=np.float32)
    path.write_text(json.dumps({"data": [{"input": row.astype(float).tolist()} for row in x]}))
    return path


def perf_analyzer(url: str, protocol: str, model: str, concurrency: int, data: Path) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".csv") as out:
        cmd = [
            str(TOOLS / "bin" / "perf_analyzer"),
            "-m", model, "-u", url, "-i", protocol, "-b", "1",
            "--concurrency-range", str(concurrency),
            "--input-data", str(data),
            "--measurement-interval", "3000", "-s", "30", "--max-trials", "4",
            "-f", out.name,
        ]  # fmt: skip
        if protocol == "http":
            cmd += ["--input-tensor-format", "binary", "--output-tensor-format", "binary"]
        env = {**os.environ, "LD_LIBRARY_PATH": str(TOOLS / "lib")}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        if result.returncode != 0 and not Path(out.name).read_text().strip():
            return {"error": 1.0, "infer_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0}
        row = next(csv.DictReader(io.StringIO(Path(out.name).read_text())))
    return {
        "infer_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--paths", nargs="+", default=["fast", "default"], choices=["fast", "default"])
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)

    work = Path(tempfile.mkdtemp(prefix="serving-bench-"))
    repo = work / "repo"
    build_demo_repository(repo)
    build_reference_mlp(repo)
    rows: list[dict[str, Any]] = []
    limits = {}
    for model, features in MODELS.items():
        newest = max(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit())
        threads = 2 if model == "reference_mlp" else 1
        limits[model] = in_process_limit(repo / model / str(newest) / "model.onnx", features, threads)
        print(
            f"in-process limit {model}: {limits[model][1]:,.0f} rows/s at batch {limits[model][0]} ({threads} threads)"
        )

    for path in args.paths:
        server = ServerProcess(
            repo, work / f"server-{path}.log", env={"SERVING_FAST_PATH": str(path == "fast").lower()}
        )
        began = time.monotonic()
        server.start()
        print(f"[{path}] server ready in {time.monotonic() - began:.1f}s")
        try:
            for model, features in MODELS.items():
                data = input_data(work / f"{model}.json", features)
                for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
                    for c in args.concurrency:
                        r = perf_analyzer(url, protocol, model, c, data)
                        r.update(path=path, model=model, protocol=protocol, concurrency=c)
                        r["ratio"] = r["infer_s"] / limits[model][1]
                        rows.append(r)
                        print(
                            f"[{path}] {model:14s} {protocol:4s} c={c:<3d} {r['infer_s']:9,.0f} infer/s  "
                            f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  {r['ratio']:.3f} of limit",
                            flush=True,
                        )
        finally:
            server.stop()

    lines = [
        "| path | model | protocol | concurrency | infer/s | p50 ms | p99 ms | limit rows/s (batch) | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        batch, limit = limits[r["model"]]
        lines.append(
            f"| {r['path']} | {r['model']} | {r['protocol']} | {r['concurrency']} | {r['infer_s']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {limit:,.0f} ({batch}) | {r['ratio']:.3f} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "online.md").write_text(
        f"# make bench ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)\n\n{table}\n"
    )


if __name__ == "__main__":
    main()

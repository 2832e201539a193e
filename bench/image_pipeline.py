"""The image pipeline side by side with PyTriton, in one run (bench/results/models.md):

* `digits_image` (decode PNG in a python step -> `digits` ONNX -> label in a python step) served
  by `serving serve`, against PyTriton doing the same decode and model in its Python callable
  (bench/pytriton_image.py): perf_analyzer (tritonclient 2.51.0) over gRPC and HTTP (binary
  tensors), sync and ``--async``, at concurrency 16 and 64, batch-1 requests of real PNG files;
* a branching pipeline (`digits_branch`: decode, `digits` v1, and `digits` v2 only for rows whose
  v1 top probability < 0.9) against its slowest step alone (`digits_decode`), 64 clients, gRPC;
* the floors beside them: a bare grpc.aio echo server (the machine's Python gRPC floor) and the
  pipeline in-process (no network: LocalInferenceService, 64 concurrent callers).

    .venv/bin/python bench/image_pipeline.py
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from online import Peer, input_data, libpython_dir, perf_analyzer  # noqa: E402

from serving.demo import build_demo_repository, digits_data, png_bytes  # noqa: E402

from server_process import ServerProcess, free_port  # noqa: E402

IMAGES = 16
RESULTS = HERE / "results" / "models.md"


def branch_pipeline(repo: Path) -> None:
    doc = {
        "platform": "pipeline",
        "max_batch_size": 64,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [1], "from": "post.label"},
            {"name": "probabilities", "datatype": "FP32", "shape": [10], "from": "large.probabilities"},
        ],
        "steps": [
            {"name": "decode", "model": "digits_decode", "inputs": {"image": "image"}},
            {"name": "small", "model": "digits:1", "inputs": {"input": "decode.pixels"}},
            {"name": "large", "model": "digits:2", "inputs": {"input": "decode.pixels"},
             "when": "max(small.probabilities) < 0.9", "otherwise": {"probabilities": "small.probabilities"}},
            {"name": "post", "model": "digits_label", "inputs": {"probabilities": "large.probabilities"}},
        ],
    }  # fmt: skip
    (repo / "digits_branch" / "1").mkdir(parents=True)
    (repo / "digits_branch" / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def input_file(path: Path) -> tuple[Path, list[bytes]]:
    """perf_analyzer's real input data: PNG files, each one BYTES element (serialized form, b64)."""
    x, _ = digits_data()
    pngs = [png_bytes(x[i], side=28) for i in range(IMAGES)]
    rows = [{"image": {"b64": base64.b64encode(struct.pack("<I", len(p)) + p).decode(), "shape": [1]}} for p in pngs]
    path.write_text(json.dumps({"data": rows}))
    return path, pngs


def in_process(repo: Path, pngs: list[bytes], model: str, concurrency: int = 64, requests: int = 3000) -> float:
    """Requests/s of the pipeline through serving's own code alone (no network, no Ray)."""
    from serving.service.local import LocalInferenceService
    from serving.types import InferenceRequest, Tensor

    async def run() -> float:
        svc = LocalInferenceService.from_repository(repo)
        try:
            left = requests

            async def caller(i: int) -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    data = np.array([[pngs[(i + left) % len(pngs)]]], dtype=np.object_)
                    await svc.infer(InferenceRequest(model_name=model, inputs=[Tensor("image", "BYTES", data)]))

            start = time.perf_counter()
            await asyncio.gather(*(caller(i) for i in range(concurrency)))
            return requests / (time.perf_counter() - start)
        finally:
            await svc.close()

    return asyncio.run(run())


def line(label: str, r: dict[str, float]) -> str:
    return f"{label:44s} {r['infer_s']:9,.0f} infer/s  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3, help="branch / slowest-step pairs, order alternated")
    parser.add_argument(
        "--branch-only", action="store_true", help="only the branching pipeline against its slowest step (no file)"
    )
    args = parser.parse_args()
    subprocess.run(["bash", str(HERE / "perf_tools.sh")], check=True)
    if not args.branch_only:
        subprocess.run(["bash", str(HERE / "pytriton_env.sh")], check=True)
    work = Path(tempfile.mkdtemp(prefix="serving-bench-models-"))
    repo = build_demo_repository(work / "repo")
    branch_pipeline(repo)
    data, pngs = input_file(work / "images.json")
    limit = in_process(repo, pngs, "digits_image")
    print(f"[in-process] digits_image, 64 callers: {limit:,.0f} requests/s", flush=True)
    alone = {m: in_process(repo, pngs, m) for m in ("digits_branch", "digits_decode")}
    print(
        f"[in-process] digits_branch {alone['digits_branch']:,.0f} / digits_decode {alone['digits_decode']:,.0f} "
        f"requests/s, 64 callers: {alone['digits_branch'] / alone['digits_decode']:.2f}",
        flush=True,
    )

    serving = ServerProcess(repo, work / "serving.log", metrics_every_second=False)
    serving.start()
    if args.branch_only:
        try:
            branch_rounds(serving.grpc_url, data, args.rounds)
        finally:
            serving.stop()
        return
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    py = str(HERE / ".pytriton/bin/python")
    peer = Peer(
        [py, str(HERE / "pytriton_image.py"), "--model", str(repo / "digits" / "2" / "model.onnx"),
         "--http-port", str(http), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics)],
        work / "pytriton.log", env={"LD_LIBRARY_PATH": libpython_dir(py)},
    )  # fmt: skip
    floor_port = free_port()
    floor = Peer(
        [sys.executable, str(HERE / "echo_floor.py"), "--repository", str(repo), "--model", "digits",
         "--grpc-port", str(floor_port)],
        work / "floor.log",
    )  # fmt: skip
    rows: list[str] = []
    try:
        for protocol in ("grpc", "http"):
            for mode in ("sync", "async"):
                extra = ("--async",) if mode == "async" else ()
                for c in args.concurrency:
                    ours = perf_analyzer(
                        serving.grpc_url if protocol == "grpc" else serving.http_url,
                        protocol, "digits_image", "1", c, data, extra=extra,
                    )  # fmt: skip
                    theirs = perf_analyzer(
                        f"127.0.0.1:{grpc_port if protocol == 'grpc' else http}",
                        protocol, "digits_image", "1", c, data, extra=extra,
                    )  # fmt: skip
                    print(line(f"[serving ] {protocol} {mode} c={c}", ours), flush=True)
                    print(line(f"[pytriton] {protocol} {mode} c={c}", theirs), flush=True)
                    ratio = ours["infer_s"] / theirs["infer_s"] if theirs["infer_s"] else 0.0
                    rows.append(
                        f"| {protocol} | {mode} | {c} | {ours['infer_s']:,.0f} | {ours['p50_ms']:.2f} | "
                        f"{theirs['infer_s']:,.0f} | {theirs['p50_ms']:.2f} | {ratio:.2f} |"
                    )
        pixels = input_data(work / "pixels.json", 64)
        # sync: perf_analyzer's --async records no valid request against the echo's canned answer
        echo = perf_analyzer(f"127.0.0.1:{floor_port}", "grpc", "digits", "2", 64, pixels)
        print(line("[floor   ] grpc.aio echo sync c=64", echo), flush=True)
        floor.stop()  # the branch is measured with the peers stopped: it and its step share the machine alone
        peer.stop()
        pairs = branch_rounds(serving.grpc_url, data, args.rounds)
    finally:
        floor.stop()
        peer.stop()
        serving.stop()
    write(rows, limit, alone, echo, pairs, args.concurrency)


def branch_rounds(url: str, data: Path, rounds: int) -> list[tuple[float, float]]:
    """(branch, slowest step alone) infer/s at 64 clients over gRPC (``--async``), ``rounds`` pairs
    with the order alternated (B D, D B, ...): the machine's drift between windows falls on both."""
    pairs = []
    for i in range(rounds):
        measured = {}
        for model in ("digits_branch", "digits_decode") if i % 2 == 0 else ("digits_decode", "digits_branch"):
            measured[model] = perf_analyzer(url, "grpc", model, "1", 64, data, extra=("--async",))
            print(line(f"[serving ] {model} grpc async c=64", measured[model]), flush=True)
        pair = (measured["digits_branch"]["infer_s"], measured["digits_decode"]["infer_s"])
        print(f"round {i + 1}: branch / slowest step = {pair[0] / pair[1] if pair[1] else 0.0:.2f}", flush=True)
        pairs.append(pair)
    print(f"median: {median_share(pairs):.2f} of the slowest step", flush=True)
    return pairs


def median_share(pairs: list[tuple[float, float]]) -> float:
    return float(np.median([b / d if d else 0.0 for b, d in pairs]))


def write(
    rows: list[str], limit: float, alone: dict[str, float], echo: dict[str, float], pairs: list[tuple[float, float]],
    concurrency: list[int],
) -> None:  # fmt: skip
    each = ", ".join(f"{b:,.0f} / {d:,.0f} = {b / d if d else 0.0:.2f}" for b, d in pairs)
    text = [
        "# Python steps and pipelines: `digits_image` against PyTriton, a branching pipeline, the floors",
        "",
        "`.venv/bin/python bench/image_pipeline.py` on the 2-core VM, everything on one machine in one run: "
        "`serving serve` (local Ray, one replica) and PyTriton 0.7.0 (Triton's C++ front end, the same decode "
        "and `digits` v2 model in its `@batch` callable, dynamic batching 64 rows / 500 µs), "
        f"perf_analyzer (tritonclient 2.51.0) with {IMAGES} real PNG files (28x28, grayscale) as batch-1 "
        "requests, HTTP with binary tensors.",
        "",
        "| protocol | perf_analyzer mode | concurrency | serving infer/s | serving p50 ms | PyTriton infer/s | "
        "PyTriton p50 ms | serving / PyTriton |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"- In-process limit (the same pipeline through LocalInferenceService, 64 callers, no network): {limit:,.0f} requests/s.",
        f"- Floor: a bare grpc.aio echo server (precomputed answer, `digits`-sized request) at 64 clients "
        f"(sync): {echo['infer_s']:,.0f} requests/s.",
        f"- Branching pipeline `digits_branch` (decode, `digits` v1, `digits` v2 only where v1's top probability "
        f"< 0.9, label) at 64 clients over gRPC (`--async`) against its slowest step `digits_decode` alone, "
        f"{len(pairs)} pairs in alternated order with the peers stopped, infer/s: {each}; median "
        f"**{median_share(pairs):.2f}** of the slowest step. In process (64 callers, no network): "
        f"{alone['digits_branch']:,.0f} against {alone['digits_decode']:,.0f} requests/s = "
        f"{alone['digits_branch'] / alone['digits_decode']:.2f}.",
    ]
    RESULTS.write_text("\n".join(text) + "\n", encoding="utf-8")
    print(f"written to {RESULTS} (concurrency {concurrency})")


if __name__ == "__main__":
    main()

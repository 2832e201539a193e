"""What a pipeline step costs beyond calling its model directly, in one process (no network):
a real LocalInferenceService, one caller, a tiny ONNX model (x + 1 on 4 floats) so that the
model's own time is small next to what is measured.

For k = 1, 2, 4 and 8: the median latency of a pipeline of k chained steps of the model, and of
k direct requests to the model one after another; the overhead per step is their difference / k.
Also a branch: a 2-step pipeline whose second step runs for half of the rows (``when:``).

    .venv/bin/python bench/pipeline_overhead.py [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from onnx import TensorProto, helper, numpy_helper

from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, Tensor

Array = np.ndarray[Any, Any]


def plus_one(root: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "plus_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (root / "plus" / "1").mkdir(parents=True)
    (root / "plus" / "1" / "model.onnx").write_bytes(model.SerializeToString())
    (root / "plus" / "model.yaml").write_text(yaml.safe_dump({"platform": "onnx", "max_batch_size": 64}))


def chain(root: Path, k: int) -> None:
    steps = [{"name": "s0", "model": "plus", "inputs": {"x": "x"}}]
    steps += [{"name": f"s{i}", "model": "plus", "inputs": {"x": f"s{i - 1}.y"}} for i in range(1, k)]
    doc = {
        "platform": "pipeline", "max_batch_size": 64,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4], "from": f"s{k - 1}.y"}],
        "steps": steps,
    }  # fmt: skip
    (root / f"chain{k}" / "1").mkdir(parents=True)
    (root / f"chain{k}" / "model.yaml").write_text(yaml.safe_dump(doc))


def branch(root: Path) -> None:
    doc = {
        "platform": "pipeline", "max_batch_size": 64,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4], "from": "b.y"}],
        "steps": [
            {"name": "a", "model": "plus", "inputs": {"x": "x"}},
            {"name": "b", "model": "plus", "inputs": {"x": "a.y"}, "when": "max(a.y) > 1.5", "otherwise": {"y": "a.y"}},
        ],
    }  # fmt: skip
    (root / "branch" / "1").mkdir(parents=True)
    (root / "branch" / "model.yaml").write_text(yaml.safe_dump(doc))


async def median_us(svc: LocalInferenceService, model: str, x: Array, requests: int, calls: int = 1) -> float:
    times = []
    for i in range(requests + 200):
        start = time.perf_counter_ns()
        for _ in range(calls):
            await svc.infer(InferenceRequest(model_name=model, inputs=[Tensor("x", "FP32", x)]))
        if i >= 200:  # warm
            times.append(time.perf_counter_ns() - start)
    return float(np.median(times)) / 1000


async def run(requests: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        plus_one(root)
        ks = (1, 2, 4, 8)
        for k in ks:
            chain(root, k)
        branch(root)
        svc = LocalInferenceService.from_repository(root)
        x = np.zeros((1, 4), np.float32)
        lines = [
            "| pipeline | pipeline p50 µs | k direct requests p50 µs | overhead per step µs |",
            "|---|---|---|---|",
        ]
        try:
            for k in ks:
                piped = await median_us(svc, f"chain{k}", x, requests)
                direct = await median_us(svc, "plus", x, requests, calls=k)
                line = f"| {k} chained step(s) | {piped:.1f} | {direct:.1f} | {(piped - direct) / k:+.1f} |"
                print(line, flush=True)
                lines.append(line)
            halves = np.array([[0.0] * 4, [1.0] * 4], np.float32)  # row 0 skips step b, row 1 runs it
            piped = await median_us(svc, "branch", halves, requests)
            direct = await median_us(svc, "plus", halves, requests, calls=2)
            line = f"| 2 steps, the 2nd for 1 of 2 rows (when:) | {piped:.1f} | {direct:.1f} | {(piped - direct) / 2:+.1f} |"
            print(line, flush=True)
            lines.append(line)
        finally:
            await svc.close()
        return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pipeline_overhead.md")
    args = parser.parse_args()
    lines = asyncio.run(run(args.requests))
    head = [
        "# What a pipeline step costs over calling its model directly",
        "",
        f"`.venv/bin/python bench/pipeline_overhead.py --requests {args.requests}`: one process, one caller, "
        "a real LocalInferenceService; the step model adds 1 to 4 floats (ONNX). Median latencies; a negative "
        "overhead means the pipeline is cheaper than the same number of separate requests (a step skips the "
        "request checks and answer building a request pays).",
        "",
    ]
    args.out.write_text("\n".join(head + lines) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

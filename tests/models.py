"""Tiny real models for tests, written as ONNX files into a repository folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from onnx import TensorProto, helper, numpy_helper

# Every OIP datatype the identity model round-trips (BF16 has no numpy dtype).
IDENTITY_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _save(model: Any, path: Path) -> None:
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _config(model_dir: Path, doc: dict[str, Any]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.yaml").write_text(yaml.safe_dump(doc))


def identity_model(
    root: Path, name: str = "identity", max_batch_size: int = 8, types: tuple[str, ...] = tuple(IDENTITY_TYPES)
) -> None:
    """One input ``in_<T>`` -> output ``out_<T>`` per datatype, shape [N, -1]."""
    nodes, inputs, outputs = [], [], []
    for dt in types:
        onnx_type = IDENTITY_TYPES[dt]
        t = dt.lower()
        nodes.append(helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{t}", onnx_type, ["N", "D"]))
        outputs.append(helper.make_tensor_value_info(f"out_{t}", onnx_type, ["N", "D"]))
    graph = helper.make_graph(nodes, name, inputs, outputs)
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / name / "1" / "model.onnx")
    _config(root / name, {"platform": "onnx", "max_batch_size": max_batch_size})


def add_model(root: Path, name: str = "add", versions: tuple[int, ...] = (1, 2, 3), **config: Any) -> None:
    """``y = x + version`` on FP32 [N, 4]: each version answers differently."""
    for v in versions:
        node = helper.make_node("Add", ["x", "c"], ["y"])
        c = numpy_helper.from_array(np.full((4,), float(v), np.float32), "c")
        graph = helper.make_graph(
            [node],
            name,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
            [c],
        )
        _save(
            helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / name / str(v) / "model.onnx"
        )
    _config(root / name, {"platform": "onnx", "max_batch_size": 16, **config})


def slow_model(
    root: Path,
    name: str = "slow",
    size: int = 1024,
    repeats: int = 40,
    max_batch_size: int = 1,
    max_queue_size: int = 2,
    max_queue_delay_ms: float = 0,
) -> None:
    """A chain of ``repeats`` [size x size] matmuls: tens of ms per call, for overload tests."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32), "w")
    nodes, x = [], "x"
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [x, "w"], [f"h{i}"]))
        x = f"h{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])],
        [w],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / name / "1" / "model.onnx")
    _config(
        root / name,
        {
            "platform": "onnx",
            "max_batch_size": max_batch_size,
            "dynamic_batching": {"max_queue_delay_ms": max_queue_delay_ms, "max_queue_size": max_queue_size},
        },
    )


def spin_model(root: Path, name: str = "spin", **config: Any) -> None:
    """``y = x + spins`` on FP32 [N, 4], computed by an ONNX ``Loop`` of ``max(spins)`` steps
    (INT64 [N, 1]): fast for small values, a model that hangs (about a microsecond a step) for
    large ones. A real runtime's hang, in C++, that no Python code can interrupt."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["acc_in", "one"], ["acc"])],
        "step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc", TensorProto.FLOAT, ["N", 4]),
        ],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["spins"], ["steps"], keepdims=0),
            helper.make_node("Loop", ["steps", "", "x"], ["y"], body=body),
        ],
        name,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("spins", TensorProto.INT64, ["N", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / name / "1" / "model.onnx")
    _config(root / name, {"platform": "onnx", "max_batch_size": 16, **config})


def broken_batch_model(root: Path, name: str = "broken") -> None:
    """Returns one row whatever the batch: the batcher must fail the batch (INTERNAL)."""
    node = helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / name / "1" / "model.onnx")
    _config(
        root / name,
        {
            "platform": "onnx",
            "max_batch_size": 4,
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
        },
    )


def profile_add(root: Path, version: int) -> None:
    """A training profile for ``add`` (``serving profile``'s code, on a Parquet file of uniform
    rows under ``<root>/_training``): the server watches that version's inputs for drift."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.control.tools import profile_version

    data = root / "_training" / "add.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    rows = np.random.default_rng(0).random((2000, 4)).astype(np.float32)
    pq.write_table(pa.table({"x": pa.array(list(rows), pa.list_(pa.float32()))}), data)
    profile_version(root, f"add:{version}", [str(data)])


def build_test_repository(root: Path) -> Path:
    identity_model(root)
    # FP16 has no typed gRPC field, so typed requests use a model without it.
    identity_model(root, "identity_typed", types=tuple(t for t in IDENTITY_TYPES if t != "FP16"))
    add_model(root, version_policy={"latest": 2}, drift={"sample_rate": 1.0, "min_rows": 1})
    profile_add(root, 3)
    slow_model(root)
    # Milliseconds per execution, so that concurrent requests pile up behind a running batch.
    slow_model(root, "batched", size=256, repeats=20, max_batch_size=16, max_queue_size=512, max_queue_delay_ms=2)
    broken_batch_model(root)
    return root


def build_demo_and_test_repository(root: Path) -> Path:
    """The demo models (digits, digits_torch) next to the test models, in one repository."""
    from serving.demo import build_demo_repository

    build_demo_repository(root)
    return build_test_repository(root)

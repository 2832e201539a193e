"""Tiny real models for tests, written as ONNX files into a repository folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from filelock import FileLock
from onnx import TensorProto, helper, numpy_helper

from serving.control.store import LifecycleStore
from serving.lifecycle.routing import promote

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


DEMO_CACHE: Path | None = None
"""Where the demo repository is built once for a whole test run (set by the integration
conftest; shared by the pytest-xdist workers); None: every call trains the demo models."""


def build_demo_repository(root: Path) -> Path:
    """``serving.demo.build_demo_repository(root)``: the same files, trained once per test run
    (training the demo models takes ~9 s of CPU) and copied into ``root``."""
    from serving import demo

    if DEMO_CACHE is None:
        return demo.build_demo_repository(root)
    built = DEMO_CACHE / ".built"
    with FileLock(str(DEMO_CACHE) + ".lock"):
        if not built.exists():
            demo.build_demo_repository(DEMO_CACHE)
            built.touch()
    shutil.copytree(DEMO_CACHE, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built"))
    return root


def build_demo_and_test_repository(root: Path) -> Path:
    """The demo models (digits, digits_torch) next to the test models, in one repository."""
    build_demo_repository(root)
    build_model_kinds(root)
    return build_test_repository(root)


# Python, tabular and pipeline models (issue 23). Each python model's code is written as a user
# would write it; the values it receives decide what it does, so one model shows every rule.
PY_RULES = """
import time

import numpy as np

from serving import ROW_ERRORS, InvalidInput


class Model:
    def __init__(self, context):
        self.offset = float(context.parameters.get("offset", 0.0))

    def predict(self, inputs):
        x = inputs["x"]
        if (x == -1).any():
            raise InvalidInput("x must not be -1")
        if (x == 666).any():
            raise RuntimeError("a bug in model.py, with a secret: hunter2")
        if (x == 777).any():
            return {"y": x.astype(np.int64)}
        if (x == 888).any():
            return {"y": x[:1]}
        if (x == 999).any():
            time.sleep(6)  # past execution_timeout_s: the version is reloaded
        errors = ["13 is unlucky" if v == 13 else None for v in x[:, 0]]
        return {"y": x + self.offset, ROW_ERRORS: errors}
"""

PY_VERSIONED = """
import numpy as np

ANSWER = {answer}


class Model:
    def __init__(self, context):
        pass

    def predict(self, inputs):
        return {{"y": np.full_like(inputs["x"], ANSWER)}}
"""

PY_SMALL = """
import numpy as np


class Model:
    def __init__(self, context):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        return {"y": x, "confidence": x}
"""

PY_LARGE = """
import numpy as np


class Model:
    def __init__(self, context):
        self.calls = 0

    def predict(self, inputs):
        return {"y": inputs["x"] * 100.0}
"""

SCALAR_X = [{"name": "x", "datatype": "FP32", "shape": [1]}]
SCALAR_Y = [{"name": "y", "datatype": "FP32", "shape": [1]}]


def python_model(root: Path, name: str, code: str | dict[int, str], **config: Any) -> None:
    """A ``platform: python`` model: ``code`` for version 1, or per version."""
    versions = code if isinstance(code, dict) else {1: code}
    for version, text in versions.items():
        folder = root / name / str(version)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.py").write_text(text)
    doc = {"platform": "python", "max_batch_size": 16, "inputs": SCALAR_X, "outputs": SCALAR_Y, **config}
    _config(root / name, doc)


def build_model_kinds(root: Path) -> Path:
    """Python models (every error rule, two versions of one class, an import failure, a hang),
    tabular models of each library, and pipelines (a branch, an alias step)."""
    python_model(
        root, "py_rules", PY_RULES, parameters={"offset": 0.5},
        instance={"execution_timeout_s": 2.0},
        dynamic_batching={"max_queue_delay_ms": 20},
    )  # fmt: skip
    python_model(root, "py_twins", {1: PY_VERSIONED.format(answer=1), 2: PY_VERSIONED.format(answer=2)},
                 version_policy={"all": True})  # fmt: skip
    python_model(
        root, "py_broken", {1: PY_VERSIONED.format(answer=1), 2: "import no_such_module_anywhere\n"},
        version_policy={"all": True},
    )  # fmt: skip
    python_model(root, "py_plus", {1: PY_VERSIONED.format(answer=1), 2: PY_VERSIONED.format(answer=2)},
                 version_policy={"all": True}, gates={"require_evaluation": False})  # fmt: skip
    python_model(
        root, "py_small", PY_SMALL,
        outputs=[*SCALAR_Y, {"name": "confidence", "datatype": "FP32", "shape": [1]}],
    )  # fmt: skip
    python_model(root, "py_large", PY_LARGE)
    pipeline(
        root, "branchy",
        steps=[
            {"name": "small", "model": "py_small", "inputs": {"x": "x"}},
            {"name": "large", "model": "py_large", "inputs": {"x": "x"}, "when": "small.confidence < 0.6",
             "otherwise": {"y": "small.y"}},
        ],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "large.y"}],
    )  # fmt: skip
    # The alias the pipeline's step follows exists before the server starts (a pipeline whose
    # step does not resolve is not ready, and neither is a strictly ready server).
    LifecycleStore(root / "_serving").update(
        "py_plus", lambda r: promote(r, "production", 1), who="tests", action="promote"
    )
    pipeline(
        root, "plus_pipe",
        steps=[{"name": "plus", "model": "py_plus@production", "inputs": {"x": "x"}}],
        outputs=[{"name": "y", "datatype": "FP32", "shape": [1], "from": "plus.y"}],
    )  # fmt: skip
    tabular_models(root)
    return root


def pipeline(root: Path, name: str, **config: Any) -> None:
    """A ``platform: pipeline`` model on one FP32 [1] input ``x``."""
    (root / name / "1").mkdir(parents=True, exist_ok=True)
    _config(root / name, {"platform": "pipeline", "max_batch_size": 64, "inputs": SCALAR_X, **config})


def iris() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float64), y


def tabular_models(root: Path) -> None:
    """A random forest (sklearn), gradient-boosted trees (XGBoost, LightGBM) on iris, one
    feature vector input each; and a LightGBM regressor."""
    import joblib
    import lightgbm
    import xgboost
    from sklearn.ensemble import RandomForestClassifier

    x, y = iris()
    folder = root / "iris_forest" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y), folder / "model.joblib")
    _config(
        root / "iris_forest",
        {"platform": "sklearn", "max_batch_size": 64, "labels": ["setosa", "versicolor", "virginica"]},
    )
    folder = root / "iris_xgb" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    xgboost.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(x, y).save_model(folder / "model.json")
    _config(root / "iris_xgb", {"platform": "xgboost", "max_batch_size": 64})
    folder = root / "iris_lgbm" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    lightgbm.LGBMClassifier(n_estimators=10, verbose=-1, n_jobs=1).fit(x, y).booster_.save_model(folder / "model.txt")
    _config(root / "iris_lgbm", {"platform": "lightgbm", "max_batch_size": 64})

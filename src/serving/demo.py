"""Build the demo model repository locally (no downloads).

* ``digits``: a classifier of scikit-learn's bundled 8x8 handwritten digits, exported to
  ONNX in two versions that differ (1: logistic regression, 2: a one-hidden-layer MLP).
* ``digits_torch``: an MLP trained on the same data, exported as TorchScript.
* ``digits_image``: a pipeline from image files to the digit: ``digits_decode`` (python: decode,
  gray, 8x8, scaled like the dataset), ``digits`` (its routed version), ``digits_label`` (python:
  the answer as text and its probability).
* ``cancer``: scikit-learn's HistGradientBoostingClassifier on the bundled breast-cancer data,
  30 named FP64 inputs (the dataset's feature names in snake_case), served with no code.
* ``reference_mlp`` (benchmarks only): 784->1024->1024->10 float32 with seeded weights.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DIGITS_FEATURES = 64
DIGITS_CLASSES = 10
# How `serving score` reads the demo dataset (build_demo_dataset): one list column of pixels.
DIGITS_BATCH = {"inputs": {"input": {"column": "pixels"}}, "passthrough": ["image_id"]}


def digits_data() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Features scaled to [0, 1] as float32, and integer labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


def mlp_onnx(layers: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]], *, classifier: bool) -> bytes:
    """An ONNX graph of dense layers with ReLU between them.

    Input ``input`` [N, in]; outputs ``probabilities`` (softmax) and ``label`` (argmax,
    INT64) when ``classifier``, else ``output`` (the last layer's values).
    """
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "input"
    for i, (w, b) in enumerate(layers):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
        ]
        x = f"z{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"h{i}"]))
            x = f"h{i}"
    n_in, n_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    if classifier:
        nodes += [
            helper.make_node("Softmax", [x], ["probabilities"], axis=1),
            helper.make_node("ArgMax", [x], ["label"], axis=1, keepdims=0),
        ]
        outputs = [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_out]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", [x], ["output"]))
        outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", n_out])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="serving.demo")
    model.ir_version = 9
    return bytes(model.SerializeToString())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _config(path: Path, doc: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """BLAS and OpenMP on one thread while a demo model trains (also a decorator): its datasets are
    small, and their threads spinning beside another busy process (a second build, a server
    starting) made a build take 13 s of CPU instead of 4 (two builds at once on 2 cores; 4.4 s
    each with one thread)."""
    import sklearn.ensemble  # noqa: F401  (loads the OpenMP runtime its boosting uses, so the limit covers it)
    import torch
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def build_digits(root: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data()
    v1 = LogisticRegression(max_iter=2000).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v2 = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0).fit(x, y)
    _write(root / "digits" / "1" / "model.onnx", mlp_onnx([(v1.coef_.T, v1.intercept_)], classifier=True))
    _write(
        root / "digits" / "2" / "model.onnx",
        mlp_onnx([(w, b) for w, b in zip(v2.coefs_, v2.intercepts_)], classifier=True),
    )
    _config(
        root / "digits",
        {
            "platform": "onnx",
            "description": "sklearn digits (8x8 pixels scaled to [0,1]); v1 logistic regression, v2 MLP",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_ms": 0, "max_queue_size": 1024},
            "version_policy": {"all": True},
            "labels": [str(i) for i in range(DIGITS_CLASSES)],
            "batch": DIGITS_BATCH,
        },
    )


@one_thread()
def build_digits_torch(root: Path) -> None:
    import torch
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=1).fit(x, y)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(DIGITS_FEATURES, 64)
            self.fc2 = torch.nn.Linear(64, DIGITS_CLASSES)

        def forward(self, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.fc2(torch.relu(self.fc1(inp)))
            return torch.softmax(logits, dim=1), torch.argmax(logits, dim=1)

    net = Net()
    with torch.no_grad():
        net.fc1.weight.copy_(torch.from_numpy(clf.coefs_[0].T.astype(np.float32)))
        net.fc1.bias.copy_(torch.from_numpy(clf.intercepts_[0].astype(np.float32)))
        net.fc2.weight.copy_(torch.from_numpy(clf.coefs_[1].T.astype(np.float32)))
        net.fc2.bias.copy_(torch.from_numpy(clf.intercepts_[1].astype(np.float32)))
    net.eval()
    path = root / "digits_torch" / "1" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(path))  # type: ignore[no-untyped-call]
    _config(
        root / "digits_torch",
        {
            "platform": "torchscript",
            "description": "sklearn digits MLP (64 hidden units) as TorchScript",
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_ms": 0, "max_queue_size": 1024},
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [DIGITS_FEATURES]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP32", "shape": [DIGITS_CLASSES]},
                {"name": "label", "datatype": "INT64", "shape": []},
            ],
            "batch": DIGITS_BATCH,
        },
    )


REFERENCE_LAYOUTS = {
    # One worker thread running onnxruntime with 2 threads: the faster layout for batch-1 clients
    # (perf_analyzer at 64 clients on the 2-core VM, the two layouts side by side, 3 rounds: gRPC
    # 4-8 %, gRPC --async 6-20 %, HTTP 9-16 % more requests/s than the one below): its batches form
    # while one runs, and each runs on both cores.
    "reference_mlp": {"num_threads": 2},
    # Two worker threads with one onnxruntime thread each: the faster layout for large requests
    # ([64, 784] over gRPC at 16 clients: 35,900-38,000 rows/s against 31,900-34,000,
    # bench/batch_share.py), and onnxruntime's own best in process at batch 1-128 (3-22 % more).
    "reference_mlp_batch": {"num_threads": 1, "count": 2},
}
"""The benchmark's reference MLP under two names, one per instance layout (see docs/benchmarks.md)."""


def build_reference_mlp(
    root: Path,
    sizes: tuple[int, ...] = (784, 1024, 1024, 10),
    max_batch_size: int = 128,
    layouts: dict[str, dict[str, int]] | None = None,
) -> None:
    """The benchmark's reference MLP, seeded weights (He init), as a model per instance layout
    (default: :data:`REFERENCE_LAYOUTS`' ``reference_mlp`` alone)."""
    rng = np.random.default_rng(0)
    layers = [
        (rng.standard_normal((a, b), dtype=np.float32) * np.sqrt(2.0 / a), np.zeros(b, np.float32))
        for a, b in itertools.pairwise(sizes)
    ]
    model = mlp_onnx(layers, classifier=False)
    for name, instance in (layouts or {"reference_mlp": REFERENCE_LAYOUTS["reference_mlp"]}).items():
        _write(root / name / "1" / "model.onnx", model)
        _config(
            root / name,
            {
                "platform": "onnx",
                "description": f"reference MLP {'->'.join(map(str, sizes))}, float32",
                "max_batch_size": max_batch_size,
                # Wait up to 0.5 ms (PyTriton's setting in bench/) while waiting finds company.
                "dynamic_batching": {"max_queue_delay_ms": 0.5, "adaptive": True, "max_queue_size": 4096},
                "instance": instance,
            },
        )


def _python_model(root: Path, name: str, doc: dict[str, Any]) -> None:
    """A python model whose code is one of ``serving.demo_models``."""
    from importlib import resources

    code = resources.files("serving.demo_models").joinpath(f"{name}.py").read_text(encoding="utf-8")
    _write(root / name / "1" / "model.py", code.encode("utf-8"))
    _config(root / name, {"platform": "python", **doc})


def build_digits_image(root: Path) -> None:
    """The image pipeline and its two python steps (``digits`` must be in the repository too)."""
    bytes_input = [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    _python_model(
        root,
        "digits_decode",
        {
            "description": "image files (any size, RGB or grayscale) to the 64 features of sklearn's digits",
            "max_batch_size": 64,
            "inputs": bytes_input,
            "outputs": [{"name": "pixels", "datatype": "FP32", "shape": [DIGITS_FEATURES]}],
            "parameters": {"side": 8},
        },
    )
    _python_model(
        root,
        "digits_label",
        {
            "description": "a digit's probabilities to its label (text) and that label's probability",
            "max_batch_size": 64,
            "inputs": [{"name": "probabilities", "datatype": "FP32", "shape": [DIGITS_CLASSES]}],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [1]},
                {"name": "probability", "datatype": "FP32", "shape": [1]},
            ],
            "labels": [str(i) for i in range(DIGITS_CLASSES)],
        },
    )
    (root / "digits_image" / "1").mkdir(parents=True, exist_ok=True)
    _config(
        root / "digits_image",
        {
            "platform": "pipeline",
            "description": "an image file (PNG, any size) to its digit: decode, classify, label",
            "max_batch_size": 64,
            "inputs": bytes_input,
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [1], "from": "post.label"},
                {"name": "probability", "datatype": "FP32", "shape": [1], "from": "post.probability"},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [DIGITS_CLASSES],
                    "from": "classify.probabilities",
                },
            ],
            "steps": [
                {"name": "decode", "model": "digits_decode", "inputs": {"image": "image"}},
                {"name": "classify", "model": "digits", "inputs": {"input": "decode.pixels"}},
                {"name": "post", "model": "digits_label", "inputs": {"probabilities": "classify.probabilities"}},
            ],
            "batch": {"inputs": {"image": {"column": "png"}}, "passthrough": ["image_id"]},
        },
    )


def snake_case(name: str) -> str:
    """``mean radius`` -> ``mean_radius`` (the breast-cancer feature names as input names)."""
    return "_".join(name.lower().replace("-", " ").split())


def cancer_data() -> tuple[Any, np.ndarray[Any, Any]]:
    """The bundled breast-cancer data as a DataFrame with snake_case columns, and text labels."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.rename(columns=snake_case)
    return frame, np.asarray(data.target_names)[data.target.to_numpy()]


@one_thread()
def build_cancer(root: Path) -> None:
    import joblib
    from sklearn.ensemble import HistGradientBoostingClassifier

    frame, labels = cancer_data()
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(frame, labels)
    path = root / "cancer" / "1" / "model.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    _config(
        root / "cancer",
        {
            "platform": "sklearn",
            "description": "breast-cancer diagnosis (HistGradientBoostingClassifier): 30 named FP64 features",
            "max_batch_size": 256,
            "dynamic_batching": {"max_queue_delay_ms": 0, "max_queue_size": 1024},
        },
    )


def png_bytes(pixels: np.ndarray[Any, Any], side: int = 8) -> bytes:
    """A digit's 64 features (ink 1.0) as a grayscale PNG of ``side`` x ``side`` pixels (dark ink on white)."""
    import io

    from PIL import Image

    gray = (255.0 - np.asarray(pixels, dtype=np.float32).reshape(8, 8) * 255.0).round().astype(np.uint8)
    img = Image.fromarray(gray, mode="L")
    if side != 8:
        img = img.resize((side, side), Image.Resampling.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def build_image_dataset(path: Path, rows: int | None = None) -> Path:
    """The digits as PNG files in one Parquet file: ``image_id``, ``png`` (binary), ``target``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = digits_data()
    n = len(x) if rows is None else rows
    table = pa.table(
        {
            "image_id": np.arange(n, dtype=np.int64),
            "png": pa.array([png_bytes(x[i]) for i in range(n)], pa.binary()),
            "target": y[:n],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def build_demo_dataset(root: Path, files: int = 3) -> Path:
    """The digits as Parquet for ``serving score``: ``image_id``, ``pixels`` (64 floats), ``target``,
    in ``files`` files under a hive partition ``split=train|test``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = digits_data()
    table = pa.table(
        {
            "image_id": np.arange(len(x), dtype=np.int64),
            "pixels": pa.array(list(x), pa.list_(pa.float32())),
            "target": y,
        }
    )
    bounds = np.linspace(0, len(x), files + 1).astype(int)
    for i, (start, stop) in enumerate(itertools.pairwise(bounds)):
        split = "test" if i == files - 1 else "train"
        (root / f"split={split}").mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(start, stop - start), root / f"split={split}" / f"part-{i}.parquet")
    return root


def build_demo_repository(root: Path, *, reference: bool = False) -> Path:
    """Write the demo models under ``root`` (created if missing) and return it."""
    root.mkdir(parents=True, exist_ok=True)
    build_digits(root)
    build_digits_torch(root)
    build_digits_image(root)
    build_cancer(root)
    if reference:
        build_reference_mlp(root)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path)
    parser.add_argument("--reference", action="store_true", help="also build the benchmark's reference MLP")
    args = parser.parse_args(argv)
    build_demo_repository(args.root, reference=args.reference)
    print(f"demo model repository written to {args.root}")


if __name__ == "__main__":
    main()

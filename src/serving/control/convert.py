"""``serving convert MODEL:VERSION --data PATH``: a tabular version (sklearn, XGBoost, LightGBM)
converted to ONNX, written as the model's next version only when it answers like the original.

Converters (skl2onnx, onnxmltools) compute in float32 and tree thresholds round, so a converted
model can change predictions (onnx/onnxmltools#708, #728, #667). The new version therefore has
to pass a parity check first: on every valid row of ``--data``, the same label and probabilities
(or predictions) within ``tolerance``. Otherwise nothing is written, and the worst rows are named.

The converted graph keeps the served contract of the original version (the same inputs,
FP64, and ``label`` / ``probabilities`` or ``prediction`` computed by the same rule), so aliases,
traffic splits and shadows move between the native and the ONNX version as between any two.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from serving.config.model import TABULAR, Platform
from serving.errors import ConflictError, InvalidInputError, UnsupportedError
from serving.identity import current_user
from serving.lifecycle.lineage import ArtifactRecord, ConversionRecord, Lineage, file_sha256, write_lineage
from serving.model_instance import ModelInstance
from serving.offline.inputs import resolve_inputs
from serving.offline.mapping import extract_inputs, plan_columns
from serving.offline.scorer import open_version, resolve_version
from serving.runtime.onnx import OnnxModel
from serving.runtime.tabular import TabularModel
from serving.types import TensorSpec

Array = np.ndarray[Any, Any]

DEFAULT_TOLERANCE = 1e-5
CHUNK_ROWS = 4096
WORST_SHOWN = 5


@dataclass
class Conversion:
    """A conversion that passed its parity check and was written."""

    version: int
    path: Path
    record: ConversionRecord


def convert(
    repository: Path, spec: str, data: list[str], *, tolerance: float = DEFAULT_TOLERANCE, created_by: str | None = None
) -> Conversion:
    """Convert ``spec`` to ONNX and write it as the model's next version if it answers alike on ``data``.

    Raises:
        InvalidInputError: not a tabular version, or data the model cannot read.
        UnsupportedError: the converter cannot convert this model.
        ConflictError: the converted model changes predictions (the worst rows named).
    """
    if ":" not in spec:
        raise InvalidInputError(f"name the version: MODEL:VERSION, got {spec!r}")
    entry, version = resolve_version(repository, spec)
    platform = entry.config.platform
    if platform not in TABULAR or entry.artifact(version).suffix == ".onnx":
        raise InvalidInputError(f"{spec} is a {platform.value} model in {entry.artifact(version).name}; "
                                "serving convert converts sklearn, xgboost and lightgbm artifacts to ONNX")  # fmt: skip
    native = open_version(entry, version, warmup=False)
    try:
        assert isinstance(native.model, TabularModel)
        graph, tool = _to_onnx(platform, native)
        arrays = _rows(data, entry.config.batch, native)
        with tempfile.TemporaryDirectory(prefix="serving-convert-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(graph)
            onnx_version = ModelInstance(entry.name, version, native.config, OnnxModel(path))
            onnx_version.model.load()
            try:
                diff, mismatches, worst = _compare(native, onnx_version, arrays)
            finally:
                onnx_version.unload()
    finally:
        native.unload()
    rows = len(next(iter(arrays.values()))) if arrays else 0
    if diff > tolerance or mismatches:
        shown = "; ".join(worst)
        raise ConflictError(
            f"the ONNX conversion of {spec} ({tool}) changes predictions on {rows:,} rows: largest difference "
            f"{diff:.3g} (tolerance {tolerance:g}), {mismatches} different labels; worst rows: {shown}. Nothing written."
        )
    new = max(entry.available) + 1
    folder = entry.version_dir(new)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(graph)
    from serving.control.tools import data_record

    record = ConversionRecord(
        from_version=version, tool=tool, data=data_record(data), tolerance=tolerance,
        max_abs_diff=float(diff), label_mismatches=mismatches, converted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    lineage = Lineage(
        artifact=ArtifactRecord(file="model.onnx", sha256=file_sha256(folder / "model.onnx")),
        created_by=created_by or current_user(),
        created_at=record.converted_at,
        conversion=record,
    )
    write_lineage(folder, lineage)
    return Conversion(new, folder / "model.onnx", record)


def _rows(data: list[str], batch: Any, native: ModelInstance) -> dict[str, Array]:
    inputs = resolve_inputs(data)
    table = pq.read_table(inputs.paths[0] if len(inputs.paths) == 1 else inputs.base_dir, filesystem=inputs.filesystem)
    plan = plan_columns(batch, native.inputs, native.outputs, table.schema)
    arrays, errors = extract_inputs(table, plan)
    good = np.flatnonzero(~errors.bad)
    if not len(good):
        raise InvalidInputError("no valid row in --data to check the conversion on")
    return {k: v[good] for k, v in arrays.items()}


def _compare(native: ModelInstance, converted: ModelInstance, arrays: dict[str, Array]) -> tuple[float, int, list[str]]:
    """(largest absolute difference, rows whose label differs, the worst rows described)."""
    n = len(next(iter(arrays.values())))
    names = [o.name for o in native.outputs]
    diffs = np.zeros(n)
    differs = np.zeros(n, dtype=bool)
    shown: dict[int, str] = {}
    for start in range(0, n, CHUNK_ROWS):
        chunk = {k: v[start : start + CHUNK_ROWS] for k, v in arrays.items()}
        a = native.model.predict(chunk, names)
        b = converted.model.predict(chunk, names)
        for name in names:
            if name == "label":
                bad = (a[name] != b[name]).reshape(len(a[name]), -1).any(axis=1)
                differs[start : start + len(bad)] |= bad
                for i in np.flatnonzero(bad)[:WORST_SHOWN]:
                    shown.setdefault(
                        start + int(i), f"row {start + int(i)}: label {_v(a[name][i])} -> {_v(b[name][i])}"
                    )
            else:
                gap = (
                    np.abs(a[name].astype(np.float64) - b[name].astype(np.float64))
                    .reshape(len(a[name]), -1)
                    .max(axis=1)
                )
                diffs[start : start + len(gap)] = np.maximum(diffs[start : start + len(gap)], gap)
    worst = [shown[i] for i in sorted(shown)][:WORST_SHOWN]
    for i in np.argsort(-diffs)[: WORST_SHOWN - len(worst)]:
        if diffs[i] > 0 and int(i) not in shown:
            worst.append(f"row {int(i)}: difference {diffs[i]:.3g}")
    return float(diffs.max(initial=0.0)), int(differs.sum()), worst or ["none"]


def _v(value: Any) -> str:
    item = np.asarray(value).reshape(-1)[0].item()
    return repr(item.decode() if isinstance(item, bytes) else item)


def _to_onnx(platform: Platform, native: ModelInstance) -> tuple[bytes, str]:
    """The converted graph, wrapped to the served contract, and the converter named with its version."""
    model = native.model
    assert isinstance(model, TabularModel)
    est = model.estimator
    n = est.n_features
    try:
        if platform is Platform.SKLEARN:
            import skl2onnx
            from skl2onnx.common.data_types import FloatTensorType

            raw = model.raw
            options = {id(raw): {"zipmap": False}} if est.classes is not None else None
            with _missing_value_flags_as_ints():
                onx = skl2onnx.to_onnx(raw, initial_types=[("features", FloatTensorType([None, n]))], options=options)
            tool = f"skl2onnx {skl2onnx.__version__}"
        else:
            import onnxmltools
            from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat

            if platform is Platform.XGBOOST:
                onx = onnxmltools.convert_xgboost(model.raw, initial_types=[("features", MlFloat([None, n]))])
            else:
                onx = onnxmltools.convert_lightgbm(
                    model.raw, initial_types=[("features", MlFloat([None, n]))], zipmap=False
                )
            tool = f"onnxmltools {onnxmltools.__version__}"
    except ImportError as exc:
        raise UnsupportedError(f"serving convert needs {exc.name} (pip install skl2onnx onnxmltools)") from exc
    except Exception as exc:  # the converters raise their own types for what they cannot convert
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UnsupportedError(
            f"the converter cannot convert this {platform.value} model ({type(model.raw).__name__}): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    return _wrap(onx, native.inputs, model, est.classes is not None), tool


@contextlib.contextmanager
def _missing_value_flags_as_ints() -> Iterator[None]:
    """skl2onnx 1.20 hands a HistGradientBoosting tree's leaves to ``nodes_missing_value_tracks_true``
    as Python ``False`` (its branches as numpy integers), which onnx >= 1.22 refuses in an INTS
    attribute ("Expected an int, got a boolean"), so no HistGradientBoosting model converted. The
    flag is coerced to an int while this conversion runs (one conversion at a time patches the
    module); the parity check still decides."""
    from skl2onnx.common import tree_ensemble

    with _PATCHING:
        original = tree_ensemble.add_node

        def add_node(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
            return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

        tree_ensemble.add_node = add_node
        try:
            yield
        finally:
            tree_ensemble.add_node = original


_PATCHING = threading.Lock()


def _wrap(onx: Any, inputs: tuple[TensorSpec, ...], model: TabularModel, classifier: bool) -> bytes:
    """Give the converted graph the served inputs (FP64, named features concatenated in the model's
    order) and outputs (``label`` from the argmax of ``probabilities``, or ``prediction``)."""
    from onnx import TensorProto, helper

    g = onx.graph
    features = g.input[0].name
    produced = [f"__raw_{o.name}" for o in g.output]
    renamed = {o.name: f"__raw_{o.name}" for o in g.output}  # our outputs take the served names
    for node in g.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    nodes = []
    if len(inputs) > 1:
        order = model.feature_order or tuple(s.name for s in inputs)
        nodes.append(helper.make_node("Concat", list(order), ["__stacked"], axis=1))
        stacked = "__stacked"
    else:
        stacked = inputs[0].name
    nodes.append(helper.make_node("Cast", [stacked], [features], to=TensorProto.FLOAT))
    new_inputs = [helper.make_tensor_value_info(s.name, TensorProto.DOUBLE, [None, *s.shape]) for s in inputs]
    tail = []
    if classifier:
        probabilities = produced[-1]  # label first, probabilities last in both converters
        classes = model.label_table()
        table_type = TensorProto.STRING if classes.dtype == np.object_ else TensorProto.INT64
        table = helper.make_tensor("__classes", table_type, [len(classes)], [c for c in classes.tolist()])
        tail += [
            helper.make_node("Cast", [probabilities], ["probabilities"], to=TensorProto.FLOAT),
            helper.make_node("ArgMax", ["probabilities"], ["__best"], axis=1, keepdims=1),
            helper.make_node("Constant", [], ["__classes_table"], value=table),
            helper.make_node("Gather", ["__classes_table", "__best"], ["label"], axis=0),
        ]
        outputs = [
            helper.make_tensor_value_info("label", table_type, [None, 1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(classes)]),
        ]
    else:
        tail += [
            helper.make_node("Cast", [produced[0]], ["__prediction64"], to=TensorProto.DOUBLE),
            helper.make_node(
                "Constant", [], ["__shape"], value=helper.make_tensor("__s", TensorProto.INT64, [2], [-1, 1])
            ),
            helper.make_node("Reshape", ["__prediction64", "__shape"], ["prediction"]),
        ]
        outputs = [helper.make_tensor_value_info("prediction", TensorProto.DOUBLE, [None, 1])]
    graph = helper.make_graph([*nodes, *g.node, *tail], "serving_convert", new_inputs, outputs, list(g.initializer))
    opsets = {o.domain: o.version for o in onx.opset_import}
    opsets[""] = max(opsets.get("", 13), 13)
    wrapped = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    wrapped.ir_version = onx.ir_version
    return bytes(wrapped.SerializeToString())

"""The batch scorer in-process (no Ray): demo models, errors output, inputs and manifest pieces."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from serving.demo import build_demo_dataset, digits_data
from serving.errors import InvalidInputError, ModelNotFoundError
from serving.offline.inputs import resolve_inputs
from serving.offline.mapping import plan_columns
from serving.offline.scorer import Scorer, open_version, resolve_version

from models import add_model, build_demo_and_test_repository


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_and_test_repository(tmp_path_factory.mktemp("repo"))


def scorer(repo: Path, spec: str, schema: pa.Schema) -> Scorer:
    entry, version = resolve_version(repo, spec)
    mv = open_version(entry, version)
    plan = plan_columns(entry.config.batch, mv.inputs, mv.outputs, schema, labels=entry.config.labels)
    return Scorer(mv, plan)


def digits_table(n: int) -> pa.Table:
    x, _ = digits_data()
    return pa.table({"image_id": np.arange(n), "pixels": pa.array(list(x[:n]), pa.list_(pa.float32()))})


def test_scores_equal_onnxruntime_on_the_same_rows_and_bad_rows_go_to_errors(repo: Path) -> None:
    x, _ = digits_data()
    table = digits_table(200)
    pixels = table.column("pixels").to_pylist()
    pixels[10] = None
    pixels[20] = pixels[20][:5]
    pixels[30][0] = float("inf")
    table = table.set_column(1, "pixels", pa.array(pixels, pa.list_(pa.float32())))
    result = scorer(repo, "digits:2", table.schema).score(table)

    assert result.scored.num_rows + result.errors.num_rows == 200
    assert result.errors.column("image_id").to_pylist() == [10, 20, 30]
    assert all(r for r in result.errors.column("error").to_pylist())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(repo / "digits/2/model.onnx"), opts, providers=["CPUExecutionProvider"])
    ids = result.scored.column("image_id").to_numpy()
    probs, label = sess.run(["probabilities", "label"], {"input": x[ids]})
    np.testing.assert_array_equal(np.stack(result.scored.column("probabilities").to_numpy(zero_copy_only=False)), probs)
    np.testing.assert_array_equal(result.scored.column("label").to_numpy(), label)
    assert result.scored.column("probabilities_class").to_pylist() == [str(v) for v in label]
    assert set(result.scored.column("model_name").to_pylist()) == {"digits"}
    assert set(result.scored.column("model_version").to_pylist()) == {2}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_model_scores_like_torch(repo: Path) -> None:
    import torch

    x, _ = digits_data()
    table = digits_table(100)
    result = scorer(repo, "digits_torch", table.schema).score(table)
    torch.set_num_threads(1)
    module = torch.jit.load(str(repo / "digits_torch/1/model.pt"))
    with torch.no_grad():
        probs, label = module(torch.from_numpy(x[:100]))
    np.testing.assert_array_equal(result.scored.column("label").to_numpy(), label.numpy())
    # torch's GEMM may sum in another order for another batch size (the scorer runs chunks of 64)
    np.testing.assert_allclose(
        np.stack(result.scored.column("probabilities").to_numpy(zero_copy_only=False)), probs.numpy(), atol=1e-6
    )


def test_a_batch_where_every_row_fails_keeps_the_output_schema(repo: Path) -> None:
    table = pa.table({"image_id": [1, 2], "pixels": pa.array([None, [1.0]], pa.list_(pa.float32()))})
    s = scorer(repo, "digits:1", table.schema)
    empty = s.score(table)
    full = s.score(digits_table(3))
    assert empty.scored.num_rows == 0
    assert empty.errors.num_rows == 2
    assert empty.scored.schema == full.scored.schema


def test_rows_the_model_rejects_are_retried_one_by_one_and_reported(repo: Path) -> None:
    """The test repository's ``broken`` model raises on every batch: every row ends in errors."""
    entry, version = resolve_version(repo, "broken")
    mv = open_version(entry, version, warmup=False)
    spec = mv.inputs[0]
    table = pa.table({spec.name: pa.array([[1.0] * int(np.prod(spec.shape))] * 3, pa.list_(pa.float32()))})
    plan = plan_columns(entry.config.batch, mv.inputs, mv.outputs, table.schema)
    result = Scorer(mv, plan).score(table)
    assert result.scored.num_rows == 0
    assert result.errors.num_rows == 3
    assert all(r.startswith("model error:") for r in result.errors.column("error").to_pylist())


def test_unknown_model_or_version(repo: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        resolve_version(repo, "nope")
    with pytest.raises(ModelNotFoundError, match="no version '9'"):
        resolve_version(repo, "digits:9")
    assert resolve_version(repo, "digits")[1] == 2
    assert resolve_version(repo, "digits:1")[1] == 1


def test_inputs_file_folder_glob_and_hive_partitions(tmp_path: Path) -> None:
    data = build_demo_dataset(tmp_path / "data")
    folder = resolve_inputs([str(data)])
    assert folder.rows == 1797
    assert len(folder.files) == 3
    assert folder.partition_columns == ("split",)
    one = resolve_inputs([str(data / "split=test" / "part-2.parquet")])
    assert len(one.files) == 1
    pattern = resolve_inputs([str(data / "split=train" / "*.parquet")])
    assert len(pattern.files) == 2
    uri = resolve_inputs([f"file://{data}"])
    assert uri.rows == folder.rows
    assert uri.fingerprint() == folder.fingerprint()


def test_fingerprint_changes_when_a_file_changes(tmp_path: Path) -> None:
    data = build_demo_dataset(tmp_path / "data")
    before = resolve_inputs([str(data)]).fingerprint()
    path = data / "split=test" / "part-2.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    assert resolve_inputs([str(data)]).fingerprint() != before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: [str(d / "missing")], "does not exist"),
        (lambda d: [str(d / "*.nothing")], "matches no Parquet"),
        (lambda d: [str(d)], "no .parquet file"),
        (lambda d: (d.joinpath("x.parquet").write_text("not parquet"), [str(d / "x.parquet")])[1], "not readable"),
        (
            lambda d: (
                pq.write_table(pa.table({"a": [1]}), d / "a.parquet"),
                pq.write_table(pa.table({"a": ["x"]}), d / "b.parquet"),
                [str(d)],
            )[2],
            "conflicting schemas",
        ),
    ],
)
def test_bad_inputs_are_refused(tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        resolve_inputs(make(tmp_path))


def test_manifest_counts_come_from_the_files_written(tmp_path: Path) -> None:
    from datetime import datetime

    from serving.offline.manifest import Manifest, list_outputs

    data = build_demo_dataset(tmp_path / "data")
    inputs = resolve_inputs([str(data)])
    out = tmp_path / "out"
    (out / "_errors" / "split=test").mkdir(parents=True)
    pq.write_table(pa.table({"a": list(range(1790))}), out / "p.parquet")
    pq.write_table(pa.table({"a": list(range(7))}), out / "_errors" / "split=test" / "e.parq")
    scored, errors = list_outputs(pafs.LocalFileSystem(), str(out))
    m = Manifest("m", 1, "a", "sha", inputs, scored, errors, datetime.now(UTC), 2.0, 1.0, "0", "local", {"h": 1797})
    assert (m.rows_read, m.rows_scored, m.rows_failed, m.balanced) == (1797, 1790, 7, True)
    m.write(pafs.LocalFileSystem(), str(out))
    doc = json.loads((out / "_manifest.json").read_text())
    assert doc["rows"] == {"read": 1797, "scored": 1790, "failed": 7}
    assert len(doc["input"]["files"]) == 3
    assert doc["output"]["errors"] == [{"path": "_errors/split=test/e.parq", "rows": 7, "size": errors[0].size}]
    assert (doc["executor"], doc["rows_per_node"]) == ("local", {"h": 1797})


def test_online_and_offline_answer_with_the_declared_output_dtypes(tmp_path: Path) -> None:
    """model.yaml declares FP64 for a model that computes FP32: both paths give float64."""
    import asyncio

    from serving.service.local import LocalInferenceService
    from serving.types import InferenceRequest, Tensor

    add_model(tmp_path, "wide", versions=(1,), outputs=[{"name": "y", "datatype": "FP64", "shape": [4]}])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)

    async def online() -> np.ndarray[Any, Any]:
        service = LocalInferenceService.from_repository(tmp_path)
        try:
            response = await service.infer(InferenceRequest("wide", [Tensor("x", "FP32", x)]))
        finally:
            await service.close()
        return np.asarray(response.outputs[0].data)

    online_y = asyncio.run(online())
    table = pa.table({"x": pa.array(list(x), pa.list_(pa.float32()))})
    offline = scorer(tmp_path, "wide", table.schema).score(table).scored
    offline_y = np.stack(offline.column("y").to_numpy(zero_copy_only=False))
    assert online_y.dtype == offline_y.dtype == np.float64
    assert offline.schema.field("y").type.value_type == pa.float64()
    np.testing.assert_array_equal(online_y, offline_y)

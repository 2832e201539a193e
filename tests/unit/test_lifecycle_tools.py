"""The lineage tools on real files (no Ray, the in-process batch path): a regression model's
evaluation, the training-data fingerprint (the one `serving score` writes in its manifest),
and a forced promote recorded in the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from serving.cli_lifecycle import load_summary
from serving.control.tools import evaluate, record_lineage
from serving.errors import GateError
from serving.lifecycle.lineage import read_lineage
from serving.offline import job
from serving.offline.plan import ScoreJob
from serving.service.local import LocalInferenceService

W = np.array([[1.0], [2.0], [-1.0], [0.5]], np.float32)


def linear_model(root: Path, version: int, scale: float) -> None:
    """y = x @ (W * scale): FP32 [N, 4] -> [N, 1]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(W * scale, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (root / "linear" / str(version)).mkdir(parents=True, exist_ok=True)
    (root / "linear" / str(version) / "model.onnx").write_bytes(model.SerializeToString())
    config = {"platform": "onnx", "max_batch_size": 64, "version_policy": {"all": True},
              "gates": {"min": {"r2": 0.9}}}  # fmt: skip
    (root / "linear" / "model.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    linear_model(repo, 1, 1.0)  # exact
    linear_model(repo, 2, 0.5)  # off by half
    x = np.random.default_rng(1).random((300, 4)).astype(np.float32)
    target = (x @ W).reshape(-1).astype(np.float64)
    data = tmp_path / "holdout.parquet"
    pq.write_table(pa.table({"x": pa.array(list(x), pa.list_(pa.float32())), "target": target}), data)
    return repo, data


def test_a_regression_evaluation_is_stored_with_the_data_fingerprint(setup: tuple[Path, Path]) -> None:
    repo, data = setup
    exact = evaluate(repo, "linear:1", [str(data)], "target", executor="local")
    assert exact.task == "regression"
    assert exact.metrics["rmse"] < 1e-5 and exact.metrics["r2"] == pytest.approx(1.0)
    worse = evaluate(repo, "linear:2", [str(data)], "target", executor="local")
    assert worse.metrics["r2"] < 0.9 and worse.metrics["mae"] > 0.1
    stored = read_lineage(repo / "linear" / "2")
    assert stored is not None and stored.evaluation == worse and stored.evaluation.data.rows == 300


def test_the_training_data_fingerprint_is_the_one_serving_score_records(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, data = setup
    record_lineage(repo, "linear:1", training_data=[str(data)], code_revision="abc123", params={"lr": "0.1"})
    lineage = read_lineage(repo / "linear" / "1")
    assert lineage is not None and lineage.training_data is not None and lineage.artifact is not None
    job.run(ScoreJob(repository=repo, model="linear:1", inputs=[str(data)], output=str(tmp_path / "out"),
                     executor="local", progress=False))  # fmt: skip
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert lineage.training_data.fingerprint == manifest["input"]["fingerprint"]
    assert lineage.artifact.sha256 == manifest["model"]["sha256"]
    assert lineage.code_revision == "abc123" and lineage.params == {"lr": "0.1"}


async def test_a_forced_promote_is_audited_with_the_gates_it_skipped(setup: tuple[Path, Path]) -> None:
    repo, data = setup
    evaluate(repo, "linear:2", [str(data)], "target", executor="local")
    svc = LocalInferenceService.from_repository(repo)
    try:
        assert svc.admin is not None
        with pytest.raises(GateError, match="gate min.r2"):
            await svc.admin.promote("linear", 2, "production", "alice")
        with pytest.raises(GateError, match="no evaluation"):
            await svc.admin.promote("linear", 1, "production", "alice")
        await svc.admin.promote("linear", 2, "production", "alice", force=True)
        audit = await svc.admin.audit()
        assert [(e["action"], e["details"]["version"]) for e in audit] == [
            ("promote-refused", 2),
            ("promote-refused", 1),
            ("promote", 2),
        ]
        assert audit[-1]["details"]["force"] is True and "gate min.r2" in audit[-1]["details"]["gates_missed"][0]
        assert audit[-1]["who"] == "alice"
    finally:
        await svc.close()


async def test_a_promote_without_evaluation_names_the_lineage_file_and_repository_the_server_read(
    setup: tuple[Path, Path],
) -> None:
    repo, _ = setup
    svc = LocalInferenceService.from_repository(repo)
    try:
        assert svc.admin is not None
        with pytest.raises(GateError) as info:
            await svc.admin.promote("linear", 1, "production", "alice")
        root = repo.resolve()
        assert f"no evaluation in {root / 'linear' / '1' / 'lineage.yaml'}" in info.value.message
        assert f"serving evaluate linear:1 --repository {root} --data HOLDOUT --label COLUMN" in info.value.message
    finally:
        await svc.close()


def test_load_and_unload_print_one_line() -> None:
    assert load_summary("add", "load", {"loaded": [3], "unloaded": [1], "failed": [], "kept": []}) == (
        "add: loaded v3; unloaded v1"
    )
    assert load_summary("add", "load", {"loaded": [], "failed": [[2, "sha256 mismatch"]], "kept": [1]}) == (
        "add: kept v1 (routing still points at them); v2 failed: sha256 mismatch"
    )
    assert load_summary("add", "unload", {"loaded": [], "unloaded": []}) == "add: nothing to unload"

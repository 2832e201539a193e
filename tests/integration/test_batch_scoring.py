"""`serving score` end to end: a real Ray Data job over generated Parquet, checked against the
artifact run directly and against the running online server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import onnxruntime as ort
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import tritonclient.http as thttp

from serving.demo import build_demo_dataset, digits_data

from server_process import ServerProcess

pytestmark = pytest.mark.integration

INVALID = {2000: "is null", 2001: "must hold 64 values", 2002: "NaN", 2003: "null value"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo digits in 3 files under split=train|test, plus a file of invalid rows in split=test."""
    root = build_demo_dataset(tmp_path_factory.mktemp("data") / "digits")
    x, _ = digits_data()
    good = list(x[:4])
    pixels: list[Any] = [None, list(good[1][:10]), list(good[2]), list(good[3])]
    pixels[2][5] = float("nan")
    pixels[3][7] = None
    table = pa.table(
        {
            "image_id": pa.array(list(INVALID), pa.int64()),
            "pixels": pa.array(pixels, pa.list_(pa.float32())),
            "target": pa.array([0, 1, 2, 3], pa.int64()),
        }
    )
    schema = pq.read_schema(root / "split=test" / "part-2.parquet")
    pq.write_table(table.cast(schema), root / "split=test" / "invalid.parquet")
    return root


def score(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "score", *args], capture_output=True, text=True, timeout=timeout
    )


def read_output(out: Path) -> pa.Table:
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    return table.take(pa.compute.sort_indices(table, [("image_id", "ascending")]))


def onnx_direct(path: Path, x: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    probs, label = sess.run(["probabilities", "label"], {"input": x})
    return probs, label


def online(server: ServerProcess, model: str, version: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    client = thttp.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    inp = thttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer(model, [inp], model_version=version)
    return np.asarray(result.as_numpy("probabilities"))


def score_digits(repository: Path, dataset: Path, out: Path, *extra: str) -> tuple[Path, str, str]:
    proc = score(
        "--repository", str(repository), "--model", "digits:2", "--input", str(dataset), "--output", str(out),
        "--max-error-rate", "0.01", *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def digits_job(repository: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The default executor: in-process (a small job, no cluster named)."""
    out, stdout, stderr = score_digits(repository, dataset, tmp_path_factory.mktemp("scored") / "digits")
    assert "executor: local" in stderr
    return out, stdout


@pytest.fixture(scope="module")
def digits_ray_job(repository: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The same job as a Ray Data job on a local Ray."""
    out, _, stderr = score_digits(
        repository, dataset, tmp_path_factory.mktemp("scored-ray") / "digits", "--executor", "ray"
    )
    assert "executor: ray" in stderr
    return out, stderr


def test_manifest_accounts_for_every_row(digits_job: tuple[Path, str], dataset: Path, repository: Path) -> None:
    out, stdout = digits_job
    manifest = json.loads((out / "_manifest.json").read_text())
    rows = manifest["rows"]
    assert rows == {"read": 1797 + len(INVALID), "scored": 1797, "failed": len(INVALID)}
    assert manifest["model"]["name"] == "digits"
    assert manifest["model"]["version"] == 2
    import hashlib

    assert manifest["model"]["sha256"] == hashlib.sha256((repository / "digits/2/model.onnx").read_bytes()).hexdigest()
    assert len(manifest["input"]["files"]) == 4
    assert manifest["input"]["partition_columns"] == ["split"]
    assert sum(f["rows"] for f in manifest["output"]["files"]) == 1797
    assert f"scored 1,797 of {1797 + len(INVALID):,} rows" in stdout
    assert not list(out.parent.glob(".digits.staging-*"))
    assert (out / "_SUCCESS").is_file()
    assert manifest["executor"] == "local"
    assert sum(manifest["rows_per_node"].values()) == rows["read"]


def test_errors_hold_exactly_the_invalid_rows_with_reasons(digits_job: tuple[Path, str]) -> None:
    out, _ = digits_job
    errors = pd.read_parquet(out / "_errors")  # one dataset too, hive partition restored
    assert sorted(errors["image_id"]) == sorted(INVALID)
    for e in errors.to_dict("records"):
        assert INVALID[e["image_id"]] in e["error"], e
        assert e["split"] == "test"
        assert (e["model_name"], e["model_version"]) == ("digits", 2)


def test_the_output_is_one_dataset_for_pandas_pyarrow_and_duckdb(digits_job: tuple[Path, str]) -> None:
    """Each reader sees exactly the scored rows with the partition column restored; the side
    outputs (``_errors/``, ``_manifest.json``, ``_SUCCESS``) are under names they all skip."""
    out, _ = digits_job
    want = set(range(1797))
    frame = pd.read_parquet(out)
    assert set(frame["image_id"]) == want and len(frame) == 1797
    assert set(frame["split"].astype(str)) == {"train", "test"}
    assert "error" not in frame.columns
    table = pads.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 1797 and set(table.column("split").to_pylist()) == {"train", "test"}
    rows = duckdb.sql(
        f"SELECT count(*), count(DISTINCT image_id), min(split), max(split) "
        f"FROM read_parquet('{out}/**/*.parquet', hive_partitioning = 1)"
    ).fetchall()
    assert rows == [(1797, 1797, "test", "train")]
    errors = duckdb.sql(
        f"SELECT count(*), min(split) FROM read_parquet('{out}/_errors/**/*.parq', hive_partitioning = 1)"
    ).fetchall()
    assert errors == [(len(INVALID), "test")]


def test_in_process_and_ray_executors_write_the_same_output_and_manifest(
    digits_job: tuple[Path, str], digits_ray_job: tuple[Path, str]
) -> None:
    (local, _), (ray, ray_stderr) = digits_job, digits_ray_job
    files = sorted(p.relative_to(local) for p in local.rglob("*.parquet"))
    assert files == sorted(p.relative_to(ray) for p in ray.rglob("*.parquet"))
    for f in files:
        assert pq.read_table(local / f).equals(pq.read_table(ray / f)), f
    volatile = {"started_at", "duration_s", "rows_per_s", "ray_start_s", "executor", "rows_per_node", "run"}
    a, b = (json.loads((d / "_manifest.json").read_text()) for d in (local, ray))
    assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    assert a["run"].pop("id") != b["run"].pop("id")  # each run has its own id; all else is the same
    assert a["run"] == b["run"]
    assert (a["executor"], b["executor"]) == ("local", "ray")
    assert sum(b["rows_per_node"].values()) == b["rows"]["read"]
    # A person's progress lines, not Ray Data's progress bars and logs.
    assert f"progress: {b['rows']['read']:,}/{b['rows']['read']:,} rows (100%)" in ray_stderr
    assert "Running Dataset" not in ray_stderr and "Execution plan" not in ray_stderr


def test_predictions_equal_onnxruntime_and_the_online_server(
    digits_job: tuple[Path, str], repository: Path, server: ServerProcess
) -> None:
    out, _ = digits_job
    table = read_output(out)
    x, _ = digits_data()
    ids = table.column("image_id").to_numpy()
    assert ids.tolist() == list(range(1797))
    probs = np.stack(table.column("probabilities").to_numpy(zero_copy_only=False))
    want_probs, want_label = onnx_direct(repository / "digits/2/model.onnx", x)
    np.testing.assert_array_equal(probs, want_probs)
    np.testing.assert_array_equal(table.column("label").to_numpy(), want_label)
    assert table.column("probabilities_class").to_pylist() == [str(v) for v in want_label]
    assert set(table.column("split").to_pylist()) == {"train", "test"}
    for start in (0, 700, 1790):
        np.testing.assert_array_equal(online(server, "digits", "2", x[start : start + 7]), probs[start : start + 7])


def test_torchscript_model_with_command_line_mapping_and_file_sizing(
    repository: Path, dataset: Path, server: ServerProcess, tmp_path: Path
) -> None:
    out = tmp_path / "torch"
    proc = score(
        "--repository", str(repository), "--model", "digits_torch", "--input", str(dataset / "split=train"),
        "--output", str(out), "--map", "input=pixels", "--passthrough", "image_id,target", "--rows-per-file", "300",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"]["failed"] == 0
    assert all(f["rows"] <= 300 for f in manifest["output"]["files"])
    table = read_output(out)
    x, y = digits_data()
    ids = table.column("image_id").to_numpy()
    np.testing.assert_array_equal(table.column("target").to_numpy(), y[ids])
    probs = np.stack(table.column("probabilities").to_numpy(zero_copy_only=False))
    # same rows, other batch composition: torch's GEMM may sum in another order (ONNX above is exact)
    np.testing.assert_allclose(online(server, "digits_torch", "1", x[ids[:5]]), probs[:5], atol=1e-6)


def test_too_many_failed_rows_publish_nothing(repository: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict"
    proc = score(
        "--repository", str(repository), "--model", "digits:1", "--input", str(dataset / "split=test"),
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "rows failed" in proc.stderr
    assert not out.exists()
    assert len(pq.read_table(tmp_path / "strict.rejected" / "_errors")) == len(INVALID)
    assert not (tmp_path / "strict.rejected" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "digits", "--input", "{data}/nothing"], "does not exist"),
        (["--model", "nope", "--input", "{data}"], "unknown model 'nope'"),
        (["--model", "digits:7", "--input", "{data}"], "no version '7'"),
        (["--model", "digits", "--input", "{data}", "--map", "input=pixelz"], "columns ['pixelz'] are not in"),
        (["--model", "digits", "--input", "{data}", "--map", "input=split"], "column 'split' holds one (string)"),
        (["--model", "digits", "--input", "{data}", "--passthrough", "idx"], "passthrough columns ['idx']"),
        (["--model", "digits", "--input", "{data}", "--output", "{data}"], "already exists"),
    ],
)
def test_bad_invocations_fail_with_a_clear_message(
    args: list[str], message: str, repository: Path, dataset: Path, tmp_path: Path
) -> None:
    filled = [a.format(data=dataset) for a in args]
    if "--output" not in filled:
        filled += ["--output", str(tmp_path / "out")]
    proc = score("--repository", str(repository), *filled, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()

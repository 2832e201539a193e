"""Python models, tabular models and pipelines (issue 23) against the session's real server,
through unmodified tritonclient over HTTP and gRPC, and through ``serving score``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from metrics_scrape import scrape
from tritonclient.utils import InferenceServerException

from serving.demo import cancer_data, digits_data, png_bytes

from models import iris
from server_process import ServerProcess

pytestmark = [pytest.mark.integration, pytest.mark.both_modes]

SERVING = str(Path(sys.executable).parent / "serving")
Array = np.ndarray[Any, Any]


def clients(server: ServerProcess) -> list[Any]:
    return [thttp.InferenceServerClient(server.http_url), tgrpc.InferenceServerClient(server.grpc_url)]


def infer(client: Any, model: str, inputs: dict[str, Array], version: str = "") -> dict[str, Array]:
    """One request with tritonclient (HTTP or gRPC, whichever ``client`` is)."""
    http = isinstance(client, thttp.InferenceServerClient)
    module: Any = thttp if http else tgrpc
    tensors = []
    for name, arr in inputs.items():
        datatype = "BYTES" if arr.dtype == np.object_ else {"float32": "FP32", "float64": "FP64"}[str(arr.dtype)]
        t = module.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr)
        tensors.append(t)
    result = client.infer(model, tensors, model_version=version)
    names = (
        [o["name"] for o in result.get_response()["outputs"]]
        if http
        else [o.name for o in result.get_response().outputs]
    )
    return {n: result.as_numpy(n) for n in names}


def failure(client: Any, model: str, inputs: dict[str, Array]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        infer(client, model, inputs)
    return caught.value


def x(*values: float) -> Array:
    return np.array(values, dtype=np.float32).reshape(-1, 1)


def concurrently(call: Any, n: int, timeout_s: float = 60) -> dict[int, Any]:
    """``call(i)`` for i in 0..n-1, all at once on threads: each one's answer or its InferenceServerException."""
    results: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            results[i] = call(i)
        except InferenceServerException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    return results


def status_of(exc: InferenceServerException) -> str:
    return str(exc.status())


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVING_SERVER": f"http://{server.http_url}"}
    done = subprocess.run([SERVING, *args], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, f"serving {' '.join(args)}: rc {done.returncode}\n{done.stdout}{done.stderr}"
    return done


# The demo models.


def test_digits_image_reads_pngs_of_any_size_rgb_or_gray_over_both_protocols(server: ServerProcess) -> None:
    import io

    from PIL import Image

    pixels, target = digits_data()
    images = []
    for i in range(6):
        png = png_bytes(pixels[i], side=8 + 20 * i)  # 8x8 up to 108x108
        if i % 2:  # half of them RGB
            img = Image.open(io.BytesIO(png)).convert("RGB")
            out = io.BytesIO()
            img.save(out, format="PNG")
            png = out.getvalue()
        images.append(png)
    batch = np.array(images, dtype=np.object_).reshape(-1, 1)
    for client in clients(server):
        out = infer(client, "digits_image", {"image": batch})
        assert [v.decode() for v in out["label"].reshape(-1)] == [str(t) for t in target[:6]]
        assert out["probability"].shape == (6, 1) and out["probability"].dtype == np.float32
        assert out["probabilities"].shape == (6, 10)
        np.testing.assert_allclose(out["probability"][:, 0], out["probabilities"].max(axis=1))


def test_one_undecodable_image_among_64_fails_only_its_own_request(server: ServerProcess) -> None:
    """64 concurrent one-image requests, so they batch together in the decode step; the bad one
    is answered 400 / INVALID_ARGUMENT naming the step, the other 63 with their digit."""
    pixels, target = digits_data()
    good = [png_bytes(pixels[i]) for i in range(64)]
    for client_kind in (thttp, tgrpc):

        def call(i: int, kind: Any = client_kind) -> Any:
            client = kind.InferenceServerClient(server.http_url if kind is thttp else server.grpc_url)
            image = b"\x89PNG but not really" if i == 17 else good[i]
            return infer(client, "digits_image", {"image": np.array([[image]], dtype=np.object_)})

        results = concurrently(call, 64)
        bad = results[17]
        assert isinstance(bad, InferenceServerException)
        assert "400" in status_of(bad) or "INVALID_ARGUMENT" in status_of(bad), status_of(bad)
        assert "step 'decode'" in str(bad.message()) and "decode" in str(bad.message())
        for i in range(64):
            if i != 17:
                assert isinstance(results[i], dict), (i, results[i])
                assert results[i]["label"][0, 0].decode() == str(target[i])


def test_cancer_takes_thirty_named_features(server: ServerProcess) -> None:
    frame, labels = cancer_data()
    rows = frame.iloc[:5]
    inputs = {c: rows[c].to_numpy(dtype=np.float64).reshape(-1, 1) for c in frame.columns}
    assert "mean_radius" in inputs and len(inputs) == 30
    for client in clients(server):
        out = infer(client, "cancer", inputs)
        assert [v.decode() for v in out["label"].reshape(-1)] == list(labels[:5])
        assert out["probabilities"].shape == (5, 2)
    meta = thttp.InferenceServerClient(server.http_url).get_model_metadata("cancer")
    assert meta["platform"] == "sklearn"
    assert {i["name"]: i["datatype"] for i in meta["inputs"]}["mean_radius"] == "FP64"


# A python model's rules.


def test_a_python_model_answers_on_whole_batches(server: ServerProcess) -> None:
    for client in clients(server):
        out = infer(client, "py_rules", {"x": x(1, 2, 3)})
        np.testing.assert_array_equal(out["y"], x(1.5, 2.5, 3.5))  # parameters: {offset: 0.5}


def test_invalid_input_raised_by_model_py_is_400_or_invalid_argument(server: ServerProcess) -> None:
    http, grpc_client = clients(server)
    exc = failure(http, "py_rules", {"x": x(1, -1)})
    assert "400" in status_of(exc) and "x must not be -1" in str(exc.message())
    exc = failure(grpc_client, "py_rules", {"x": x(1, -1)})
    assert "INVALID_ARGUMENT" in status_of(exc) and "x must not be -1" in str(exc.message())


def test_any_other_exception_is_500_with_the_request_id_and_no_traceback(server: ServerProcess) -> None:
    http, grpc_client = clients(server)
    for client, status in ((http, "500"), (grpc_client, "INTERNAL")):
        exc = failure(client, "py_rules", {"x": x(666)})
        assert status in status_of(exc)
        message = str(exc.message())
        assert "request id" in message and "hunter2" not in message and "Traceback" not in message
    deadline = time.monotonic() + 15  # Ray's log monitor forwards the replica's lines every so often
    while "hunter2" not in (log := server.log_path.read_text(errors="replace")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "hunter2" in log and "Traceback" in log  # the traceback went to the log


def test_outputs_that_break_model_yaml_are_500_naming_model_py_and_the_output(server: ServerProcess) -> None:
    for client in clients(server):
        for value, what in ((777, "int64"), (888, "shape")):
            exc = failure(client, "py_rules", {"x": x(value, 1)})
            message = str(exc.message())
            assert "model.py" in message and "output 'y'" in message and what in message, message
            assert "500" in status_of(exc) or "INTERNAL" in status_of(exc)


def test_a_bad_row_in_a_batch_of_good_rows_fails_alone(server: ServerProcess) -> None:
    """The model waits 20 ms for company: concurrent requests share a batch; the one with 13 fails."""
    stats_before = thttp.InferenceServerClient(server.http_url).get_inference_statistics("py_rules")

    def call(i: int) -> Any:
        client = tgrpc.InferenceServerClient(server.grpc_url) if i % 2 else thttp.InferenceServerClient(server.http_url)
        return infer(client, "py_rules", {"x": x(13 if i == 5 else i)})

    results = concurrently(call, 12)
    assert isinstance(results[5], InferenceServerException) and "13 is unlucky" in str(results[5].message())
    assert all(np.array_equal(results[i]["y"], x(i + 0.5)) for i in range(12) if i != 5)
    stats = thttp.InferenceServerClient(server.http_url).get_inference_statistics("py_rules")
    executions = stats["model_stats"][0]["execution_count"] - stats_before["model_stats"][0]["execution_count"]
    assert executions < 12  # rows shared batches


def test_an_import_failure_is_unavailable_with_its_reason_and_the_other_version_serves(server: ServerProcess) -> None:
    index = {
        (m["name"], m["version"]): m for m in thttp.InferenceServerClient(server.http_url).get_model_repository_index()
    }
    broken = index[("py_broken", "2")]
    assert broken["state"] == "UNAVAILABLE" and "no_such_module_anywhere" in broken["reason"]
    assert index[("py_broken", "1")]["state"] == "READY"
    for client in clients(server):
        np.testing.assert_array_equal(infer(client, "py_broken", {"x": x(5)})["y"], x(1))
        with pytest.raises(InferenceServerException, match="not ready|no_such_module"):
            infer(client, "py_broken", {"x": x(5)}, version="2")


def test_two_versions_with_the_same_module_and_class_names_answer_each_their_own(server: ServerProcess) -> None:
    for client in clients(server):
        assert infer(client, "py_twins", {"x": x(0)}, version="1")["y"][0, 0] == 1
        assert infer(client, "py_twins", {"x": x(0)}, version="2")["y"][0, 0] == 2


def test_a_hang_in_predict_is_503_then_reloaded_while_other_models_serve(server: ServerProcess) -> None:
    http = thttp.InferenceServerClient(server.http_url)
    exc = failure(http, "py_rules", {"x": x(999)})
    assert "503" in status_of(exc) and "execution_timeout_s" in str(exc.message())
    np.testing.assert_array_equal(infer(http, "py_twins", {"x": x(0)}, version="2")["y"], x(2))  # others serve
    until = time.monotonic() + 30
    while True:
        try:
            np.testing.assert_array_equal(infer(http, "py_rules", {"x": x(1)})["y"], x(1.5))
            break
        except InferenceServerException:
            assert time.monotonic() < until, "py_rules was not reloaded within 30 s"
            time.sleep(0.2)


# Pipelines.


def test_a_branch_runs_only_for_the_rows_that_need_it(server: ServerProcess) -> None:
    """large runs where small's confidence < 0.6; the other rows keep small's answer."""
    for client in clients(server):
        out = infer(client, "branchy", {"x": x(0.1, 0.9, 0.5, 0.95)})
        np.testing.assert_allclose(out["y"], x(10, 0.9, 50, 0.95), rtol=1e-6)
        np.testing.assert_allclose(infer(client, "branchy", {"x": x(0.9)})["y"], x(0.9))  # no row takes the branch
    meta = thttp.InferenceServerClient(server.http_url).get_model_metadata("branchy")
    assert meta["platform"] == "pipeline"
    deadline = time.monotonic() + 30  # Ray hands metrics to its agent every second or so
    while True:
        steps = {
            labels.get("step")
            for name, labels, _ in scrape(server.metrics_url)
            if name == "ray_serving_pipeline_step_duration_seconds_count" and labels.get("model") == "branchy"
        }
        if steps == {"small", "large"} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert steps == {"small", "large"}


def test_a_step_following_an_alias_through_a_promote_under_load_fails_no_request(server: ServerProcess) -> None:
    cli(server, "promote", "py_plus", "1", "--alias", "production")
    time.sleep(1.0)
    seen: Counter[str] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def load(kind: Any) -> None:
        client = kind.InferenceServerClient(server.http_url if kind is thttp else server.grpc_url)
        while not stop.is_set():
            try:
                seen[str(infer(client, "plus_pipe", {"x": x(0)})["y"][0, 0])] += 1
            except Exception as exc:  # every failure counts
                failures.append(repr(exc))

    threads = [threading.Thread(target=load, args=(k,)) for k in (thttp, tgrpc, thttp, tgrpc)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        cli(server, "promote", "py_plus", "2", "--alias", "production")
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert failures == []
    assert seen["1.0"] > 0 and seen["2.0"] > 0, seen
    meta = thttp.InferenceServerClient(server.http_url).get_model_metadata("plus_pipe")
    assert {p: v["string_param"] if isinstance(v, dict) else v for p, v in meta.get("parameters", {}).items()}.get(
        "pipeline.step.plus"
    ) == "py_plus:2"


# Tabular models.


def test_tabular_models_answer_as_the_library_does(server: ServerProcess, repository: Path) -> None:
    import joblib
    import lightgbm
    import xgboost

    features, _ = iris()
    rows = features[::10]
    forest = joblib.load(repository / "iris_forest" / "1" / "model.joblib")
    booster = xgboost.Booster(model_file=str(repository / "iris_xgb" / "1" / "model.json"))
    lgbm = lightgbm.Booster(model_file=str(repository / "iris_lgbm" / "1" / "model.txt"))
    expected = {
        "iris_forest": forest.predict_proba(rows),
        "iris_xgb": booster.inplace_predict(rows),
        "iris_lgbm": lgbm.predict(rows),
    }
    names = np.array(["setosa", "versicolor", "virginica"])
    for client in clients(server):
        for model, probabilities in expected.items():
            out = infer(client, model, {"input": rows})
            np.testing.assert_allclose(out["probabilities"], probabilities, rtol=1e-5, atol=1e-6)
            best = np.argmax(probabilities, axis=1)
            got = out["label"].reshape(-1)
            if model == "iris_forest":  # model.yaml labels
                assert [v.decode() for v in got] == list(names[best])
            else:
                assert list(got) == list(best)


# Batch scoring.


def test_score_a_pipeline_on_png_bytes_and_a_tabular_model_accounting_for_every_row(
    repository: Path, tmp_path: Path
) -> None:
    pixels, target = digits_data()
    images = [png_bytes(pixels[i]) for i in range(200)] + [b"not an image", b""]
    pq.write_table(
        pa.table({"image_id": np.arange(202), "png": pa.array(images, pa.binary()), "target": [*target[:200], 0, 0]}),
        tmp_path / "images.parquet",
    )
    done = subprocess.run(
        [SERVING, "score", "--repository", str(repository), "--model", "digits_image", "--input",
         str(tmp_path / "images.parquet"), "--output", str(tmp_path / "scored"), "--max-error-rate", "0.05",
         "--passthrough", "image_id,target", "--executor", "local"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    scored = duckdb.sql(f"select label, target from read_parquet('{tmp_path}/scored/*.parquet')").fetchall()
    errors = duckdb.sql(f"select image_id, error from read_parquet('{tmp_path}/scored/_errors/*')").fetchall()
    assert len(scored) + len(errors) == 202
    assert sorted(i for i, _ in errors) == [200, 201] and all("step 'decode'" in e for _, e in errors)
    assert sum(label == str(t) for label, t in scored) >= 195

    frame, labels = cancer_data()
    frame["diagnosis"] = labels
    frame.loc[3, "mean_radius"] = float("nan")  # not a valid row, online or offline
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "cancer.parquet")
    done = subprocess.run(
        [SERVING, "score", "--repository", str(repository), "--model", "cancer", "--input",
         str(tmp_path / "cancer.parquet"), "--output", str(tmp_path / "cancer_scored"), "--passthrough", "diagnosis",
         "--max-error-rate", "0.01", "--executor", "local"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    counts = duckdb.sql(
        f"select count(*), sum((label = diagnosis)::int) from read_parquet('{tmp_path}/cancer_scored/*.parquet')"
    ).fetchall()[0]
    errors = duckdb.sql(f"select error from read_parquet('{tmp_path}/cancer_scored/_errors/*')").fetchall()
    assert counts is not None and counts[0] + len(errors) == len(frame) and len(errors) == 1
    assert "mean_radius" in errors[0][0]
    manifest = json.loads((tmp_path / "cancer_scored" / "_manifest.json").read_text())
    assert manifest["rows"] == {"read": len(frame), "scored": counts[0], "failed": 1}

"""The prediction log and feedback through the real adapters: HTTP (ASGI) and gRPC (a real grpc.aio
server) in front of a real service over real ONNX models, the log read back by pyarrow, pandas and
DuckDB, and re-scored by a real batch job."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from serving.config.prediction_log import PredictionLogConfig
from serving.offline import job
from serving.offline.plan import ScoreJob
from serving.prediction_log.records import sampled
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb import inference_pb2_grpc
from serving.service.local import LocalInferenceService
from serving.telemetry.metrics import (
    LIVE_ACCURACY,
    LIVE_LABELLED,
    LOG_DROPPED,
    LOG_ROWS,
    SHADOW_REQUESTS,
    AggregatedMetrics,
)

from adapter_support import http_client_for, identity_values, start_grpc
from models import IDENTITY_TYPES

pytestmark = pytest.mark.timeout(120)


def open_service(repository: Path, **log: Any) -> tuple[LocalInferenceService, AggregatedMetrics]:
    metrics = AggregatedMetrics()
    config = PredictionLogConfig(**log)
    return LocalInferenceService.from_repository(repository, metrics=metrics, prediction_log=config), metrics


def counter(metrics: AggregatedMetrics, name: str, labels: dict[str, str]) -> float:
    counters, _, _ = metrics.copy_state()
    return counters.get((name, tuple(labels.items())), 0.0)


def gauge(metrics: AggregatedMetrics, name: str, labels: dict[str, str]) -> float | None:
    _, _, gauges = metrics.copy_state()
    return gauges.get((name, tuple(labels.items())))


def read_log(folder: Path, model: str = "add") -> pd.DataFrame:
    return ds.dataset(folder / f"model={model}", partitioning="hive").to_table().to_pandas()


def add_request(rows: int, value: float, request_id: str = "") -> dict[str, Any]:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": [value] * (rows * 4)}]
    }
    if request_id:
        doc["id"] = request_id
    return doc


@pytest.fixture
async def logged(repository: Path, tmp_path: Path) -> AsyncIterator[tuple[LocalInferenceService, AggregatedMetrics]]:
    svc, metrics = open_service(repository, destination=str(tmp_path / "log"), flush_s=0.2, flush_rows=50)
    try:
        yield svc, metrics
    finally:
        await svc.close()


async def test_every_answered_request_is_logged_once_over_http_and_grpc_with_its_rows_route_and_status(
    logged: tuple[LocalInferenceService, AggregatedMetrics], tmp_path: Path
) -> None:
    svc, metrics = logged
    server, target = await start_grpc(svc)
    answered: dict[str, tuple[int, str]] = {}
    try:
        async with await http_client_for(svc) as http, grpc.aio.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)

            async def over_http(i: int) -> None:
                rows = i % 3 + 1
                r = await http.post(
                    "/v2/models/add/infer", json=add_request(rows, i), headers={"x-request-id": f"h{i}"}
                )
                assert r.status_code == 200
                answered[f"h{i}"] = (rows, "ok")

            async def with_v2_id(i: int) -> None:
                r = await http.post("/v2/models/add/versions/2/infer", json=add_request(1, i, request_id=f"v{i}"))
                assert r.status_code == 200 and r.json()["id"] == f"v{i}"
                answered[f"v{i}"] = (1, "ok")

            async def over_grpc(i: int) -> None:
                request = pb.ModelInferRequest(model_name="add")
                tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
                tensor.contents.fp32_contents.extend([float(i)] * 8)
                await stub.ModelInfer(request, metadata=(("x-request-id", f"g{i}"),))
                answered[f"g{i}"] = (2, "ok")

            async def refused(i: int) -> None:
                r = await http.post(
                    "/v2/models/add/infer",
                    json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [0.0] * 5}]},
                    headers={"x-request-id": f"bad{i}"},
                )
                assert r.status_code == 400
                answered[f"bad{i}"] = (1, "invalid_input")

            calls = [f(i) for i in range(40) for f in (over_http, over_grpc)]
            calls += [with_v2_id(i) for i in range(10)] + [refused(i) for i in range(5)]
            await asyncio.gather(*calls)
    finally:
        await server.stop(None)
    await svc.close()

    log = read_log(tmp_path / "log")
    per_request = log.groupby("request_id").agg(rows=("row", "size"), status=("status", "first"))
    assert {k: (int(v.rows), v.status) for k, v in per_request.iterrows()} == answered
    assert sorted(log[log.request_id == "h2"].row) == [0, 1, 2]
    assert set(log[log.request_id.str.startswith("v")].route) == {"version"}
    assert set(log[log.request_id.str.startswith("g")].route) == {"latest"}
    bad = log[log.status == "invalid_input"]
    assert bad.x.isna().all() and bad.error.str.contains("expects").all()
    good = log[log.status == "ok"]
    y, x = np.stack(good.y.to_numpy()), np.stack(good.x.to_numpy())
    assert np.allclose(y - x, good.version.to_numpy()[:, None])  # version v answers x + v
    total_rows = sum(rows for rows, _ in answered.values())
    logged_rows = sum(counter(metrics, LOG_ROWS.name, {"model": "add", "version": v}) for v in ("2", "3"))
    assert logged_rows == total_rows == len(log)
    counted = duckdb.sql(
        f"select count(distinct request_id) from read_parquet('{tmp_path}/log/model=*/*/*/*/*.parquet', "
        "hive_partitioning=true)"
    ).fetchall()
    assert counted == [(len(answered),)]


async def test_the_sample_is_chosen_by_request_id_alike_in_every_process(repository: Path, tmp_path: Path) -> None:
    ids = [f"req-{i}" for i in range(300)]
    for name in ("a", "b"):
        svc, _ = open_service(repository, destination=str(tmp_path / name), sample_rate=0.25)
        async with await http_client_for(svc) as http:
            for i in ids:
                assert (await http.post("/v2/models/add/infer", json=add_request(1, 1.0, i))).status_code == 200
        await svc.close()
    chosen = {i for i in ids if sampled(i, 0.25)}
    assert 40 < len(chosen) < 110
    assert set(read_log(tmp_path / "a").request_id) == set(read_log(tmp_path / "b").request_id) == chosen


async def test_a_full_queue_drops_and_counts_rows_and_every_request_is_still_answered(
    repository: Path, tmp_path: Path
) -> None:
    svc, metrics = open_service(
        repository, destination=str(tmp_path / "log"), queue_rows=10, flush_rows=1000, flush_s=3600
    )
    async with await http_client_for(svc) as http:
        answers = await asyncio.gather(
            *(http.post("/v2/models/add/infer", json=add_request(1, i, f"r{i}")) for i in range(30))
        )
    assert [a.status_code for a in answers] == [200] * 30
    assert counter(metrics, LOG_DROPPED.name, {"model": "add", "version": "3"}) == 20
    await svc.close()
    assert len(read_log(tmp_path / "log")) == 10


async def test_readers_see_only_whole_files_while_the_log_grows(repository: Path, tmp_path: Path) -> None:
    svc, _ = open_service(repository, destination=str(tmp_path / "log"), flush_rows=5, flush_s=0.05)
    seen: list[int] = []
    async with await http_client_for(svc) as http:
        for i in range(200):
            assert (await http.post("/v2/models/add/infer", json=add_request(1, i, f"r{i}"))).status_code == 200
            if i % 20 == 0 and (tmp_path / "log").exists():
                files = list((tmp_path / "log").rglob("*.parquet"))
                seen.append(sum(pq.read_metadata(f).num_rows for f in files))  # a partial file would raise
    await svc.close()
    assert seen == sorted(seen) and seen[-1] > 0
    assert not [p for p in (tmp_path / "log").rglob("*") if p.name.startswith(".")]
    assert len(read_log(tmp_path / "log")) == 200


async def test_feedback_matches_logged_predictions_and_scores_the_live_accuracy(
    logged: tuple[LocalInferenceService, AggregatedMetrics], tmp_path: Path
) -> None:
    svc, metrics = logged
    rng = np.random.default_rng(3)
    truth: dict[str, int] = {}
    async with await http_client_for(svc) as http:
        for i in range(60):
            x = rng.normal(size=4).round(3)
            doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": x.tolist()}]}
            r = await http.post("/v2/models/add/infer", json=doc, headers={"x-request-id": f"p{i}"})
            assert r.status_code == 200
            best = int(np.argmax(r.json()["outputs"][0]["data"]))
            truth[f"p{i}"] = best if i % 4 else (best + 1) % 4  # every 4th label disagrees
        labels = [{"id": k, "label": v} for k, v in truth.items()] + [{"id": "never-served", "label": 1}]
        r = await http.post("/v2/models/add/feedback", json=labels)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": 61, "matched": 60, "unmatched": 1}
        series = {"model": "add", "version": "3"}
        assert gauge(metrics, LIVE_ACCURACY.name, series) == pytest.approx(45 / 60)
        assert gauge(metrics, LIVE_LABELLED.name, series) == 60

        for body, words in [
            (b"{}", "must be a JSON list"),
            (json.dumps([{"id": "p1"}]).encode(), "label must be"),
            (json.dumps([{"id": "p1", "label": 1, "rows": 2}]).encode(), "unknown keys"),
            (json.dumps([{"id": "", "label": 1}]).encode(), "id must be"),
            (json.dumps([{"id": "p1", "label": True}]).encode(), "label must be"),
            (json.dumps([{"id": "p1", "label": 1, "row": -1}]).encode(), "row must be"),
            (b"[NaN]", "not valid JSON"),
        ]:
            r = await http.post("/v2/models/add/feedback", content=body)
            assert r.status_code == 400 and words in r.json()["error"], (body, r.text)
        r = await http.post("/v2/models/nope/feedback", json=[])
        assert r.status_code == 404
        r = await http.post("/v2/models/identity/feedback", json=[{"id": "a", "label": 1}])
        assert r.status_code == 200  # the server-wide log covers every model
    stored = ds.dataset(tmp_path / "log" / "_labels", partitioning="hive").to_table().to_pandas()
    assert len(stored) == 62 and set(stored.model) == {"add", "identity"}


async def test_feedback_without_a_log_is_refused_with_the_setting_to_change(repository: Path) -> None:
    svc = LocalInferenceService.from_repository(repository)
    try:
        async with await http_client_for(svc) as http:
            r = await http.post("/v2/models/add/feedback", json=[{"id": "a", "label": 1}])
        assert r.status_code == 400 and "prediction_log" in r.json()["error"]
    finally:
        await svc.close()


async def test_a_log_scored_again_by_another_version_gives_that_versions_answers(
    repository: Path, tmp_path: Path
) -> None:
    svc, _ = open_service(repository, destination=str(tmp_path / "log"))
    async with await http_client_for(svc) as http:
        for i in range(12):
            assert (await http.post("/v2/models/add/infer", json=add_request(i % 2 + 1, i, f"r{i}"))).status_code == 200
        bad = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [0.0] * 3}]}
        assert (await http.post("/v2/models/add/infer", json=bad)).status_code == 400
    await svc.close()
    out = tmp_path / "rescored"
    result = await asyncio.to_thread(
        job.run,
        ScoreJob(
            repository=repository,
            model="add:2",
            inputs=[str(tmp_path / "log" / "model=add")],
            output=str(out),
            passthrough=("request_id", "row"),
            executor="local",
            progress=False,
            max_error_rate=0.5,
        ),
        lambda _: None,
    )
    scored = pd.read_parquet(out).sort_values(["request_id", "row"])
    log = read_log(tmp_path / "log").sort_values(["request_id", "row"])
    good = log[log.status == "ok"]
    assert (
        len(scored) == len(good) == 18 and result.manifest is not None and result.manifest.rows_failed == 1
    )  # the refused request's row
    assert np.allclose(np.stack(scored.y.to_numpy()), np.stack(good.x.to_numpy()) + 2)


async def test_the_route_says_how_each_request_found_its_version_and_shadow_answers_are_logged_apart(
    repository: Path, tmp_path: Path
) -> None:
    metrics = AggregatedMetrics()
    svc = LocalInferenceService.from_repository(
        repository,
        metrics=metrics,
        state_dir=tmp_path / "state",
        prediction_log=PredictionLogConfig(destination=str(tmp_path / "log")),
    )
    assert svc.admin is not None
    await svc.admin.promote("add", 3, "prod", "test", force=True)
    await svc.admin.shadow("add", 2, "test")
    async with await http_client_for(svc) as http:
        for i in range(5):
            assert (await http.post("/v2/models/add/infer", json=add_request(1, i, f"l{i}"))).status_code == 200
            r = await http.post("/v2/models/add/versions/prod/infer", json=add_request(1, i, f"a{i}"))
            assert r.status_code == 200
    compared = {"model": "add", "version": "2", "outcome": "compared"}
    for _ in range(500):  # the copies run after the answers, on the shadow's worker; a close skips queued ones
        if counter(metrics, SHADOW_REQUESTS.name, compared) == 10:
            break
        await asyncio.sleep(0.01)
    await svc.close()
    log = read_log(tmp_path / "log")
    routes = {(r.request_id, r.route, int(r.version)) for r in log.itertuples()}
    for i in range(5):
        assert {(f"l{i}", "latest", 3), (f"a{i}", "alias:prod", 3)} <= routes
        assert {(f"l{i}", "shadow", 2), (f"a{i}", "shadow", 2)} <= routes  # the copy's answer, under the same id
    shadow = log[log.route == "shadow"]
    assert len(shadow) == 10 and np.allclose(np.stack(shadow.y.to_numpy()) - np.stack(shadow.x.to_numpy()), 2)


async def test_every_datatype_is_logged_as_sent_and_answered(repository: Path, tmp_path: Path) -> None:
    svc, metrics = open_service(repository, destination=str(tmp_path / "log"))
    inputs = [
        {"name": f"in_{t.lower()}", "datatype": t, "shape": [2, 2], "data": identity_values(t).ravel().tolist()}
        for t in IDENTITY_TYPES
        if t != "BYTES"
    ] + [{"name": "in_bytes", "datatype": "BYTES", "shape": [2, 2], "data": ["ab", "", "é", "xyz"]}]
    async with await http_client_for(svc) as http:
        r = await http.post("/v2/models/identity/infer", json={"id": "all-types", "inputs": inputs})
        assert r.status_code == 200, r.text
    await svc.close()
    log = ds.dataset(tmp_path / "log" / "model=identity", partitioning="hive").to_table()
    assert log.num_rows == 2 and counter(metrics, LOG_DROPPED.name, {"model": "identity", "version": "1"}) == 0
    for t in IDENTITY_TYPES:
        sent = identity_values(t)
        for name in (f"in_{t.lower()}", f"out_{t.lower()}"):
            got = log.column(name).to_pylist()
            if t == "BYTES":
                assert got == [[b"ab", b""], [b"\xc3\xa9", b"xyz"]], (name, got)
            else:
                assert np.array_equal(np.asarray(got, dtype=sent.dtype), sent), (name, got)


async def test_ids_and_labels_that_are_not_unicode_text_are_refused_or_kept_escaped(
    logged: tuple[LocalInferenceService, AggregatedMetrics], tmp_path: Path
) -> None:
    svc, metrics = logged
    async with await http_client_for(svc) as http:
        body = b'[{"id": "\\ud800", "label": 1}]'  # valid JSON, but a lone surrogate is no text
        r = await http.post("/v2/models/add/feedback", content=body)
        assert r.status_code == 400 and "not valid Unicode" in r.json()["error"]
        body = b'[{"id": "ok", "label": "\\udfff"}]'
        assert (await http.post("/v2/models/add/feedback", content=body)).status_code == 400
        doc = json.dumps(add_request(1, 1.0)).replace("{", '{"id": "\\ud800x", ', 1).encode()
        assert (await http.post("/v2/models/add/infer", content=doc)).status_code == 200
    await svc.close()
    assert list(read_log(tmp_path / "log").request_id) == ["\\ud800x"]
    assert counter(metrics, LOG_DROPPED.name, {"model": "add", "version": "3"}) == 0

"""Model lifecycle through both adapters, no Ray: aliases, traffic split, sticky keys, shadow,
repository load/unload (HTTP and Triton's gRPC RPCs), the folder watch, a tampered artifact,
and state that survives a restart."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from serving.lifecycle.lineage import ArtifactRecord, Lineage, file_sha256, write_lineage
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb import inference_pb2_grpc
from serving.service.local import LocalInferenceService
from serving.telemetry import metrics as m

from adapter_support import http_client_for, start_grpc
from models import add_model

X = [1.0, 2.0, 3.0, 4.0]
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}


def add_versions(repo: Path, *versions: int) -> None:
    """Versions of ``add`` (y = x + version); every version served, promotes need no evaluation
    here (gates are tested with the CLI)."""
    add_model(repo, versions=versions, version_policy={"all": True}, gates={"require_evaluation": False})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    add_versions(tmp_path / "repo", 1, 2)
    return tmp_path / "repo"


@pytest.fixture
async def served(repo: Path) -> AsyncIterator[tuple[LocalInferenceService, httpx.AsyncClient, Any]]:
    svc = LocalInferenceService.from_repository(repo, metrics=m.MemoryMetrics())
    server, target = await start_grpc(svc)
    async with await http_client_for(svc) as http, grpc.aio.insecure_channel(target) as channel:
        yield svc, http, inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    await server.stop(None)
    await svc.close()


async def answered_by(http: httpx.AsyncClient, path: str = "/v2/models/add/infer", **kw: Any) -> str:
    response = await http.post(path, json=BODY, **kw)
    assert response.status_code == 200, response.text
    doc = response.json()
    # y = x + version: the answer itself says which version ran
    assert doc["outputs"][0]["data"] == [x + int(doc["model_version"]) for x in X]
    return str(doc["model_version"])


async def admin(http: httpx.AsyncClient, action: str, status: int = 200, **body: Any) -> dict[str, Any]:
    response = await http.post(f"/v2/admin/models/add/{action}", json=body)
    assert response.status_code == status, response.text
    return dict(response.json())


def grpc_request(version: str) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend(X)
    return pb.ModelInferRequest(model_name="add", model_version=version, inputs=[tensor])


async def test_an_alias_works_wherever_a_version_does_and_the_answer_names_the_version(served: Any) -> None:
    _svc, http, stub = served
    await admin(http, "promote", version=1, alias="production")
    assert await answered_by(http, "/v2/models/add/versions/production/infer") == "1"
    reply = await stub.ModelInfer(grpc_request("production"))
    assert reply.model_version == "1" and list(reply.outputs[0].contents.fp32_contents) == [2, 3, 4, 5]
    md = (await http.get("/v2/models/add/versions/production")).json()
    assert md["parameters"]["served_version"] == "1"
    assert (await http.get("/v2/models/add/versions/production/ready")).status_code == 200
    stats = (await http.get("/v2/models/add/versions/production/stats")).json()
    assert stats["model_stats"][0]["version"] == "1"
    await admin(http, "promote", version=2, alias="production")
    assert await answered_by(http, "/v2/models/add/versions/production/infer") == "2"
    await admin(http, "rollback", alias="production")
    assert await answered_by(http, "/v2/models/add/versions/production/infer") == "1"
    missing = await http.post("/v2/models/add/versions/staging/infer", json=BODY)
    assert missing.status_code == 404 and "aliases: production" in missing.json()["error"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ModelInfer(grpc_request("staging"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    conflict = await admin(http, "rollback", 409, alias="production")
    assert "no earlier target" in conflict["error"]


async def test_a_traffic_split_lands_within_3_points_over_2000_requests(served: Any) -> None:
    _, http, _ = served
    await admin(http, "traffic", weights={"1": 90, "2": 10})
    counts = Counter([await answered_by(http) for _ in range(2000)])
    assert abs(counts["2"] / 2000 - 0.10) <= 0.03, counts
    await admin(http, "traffic", weights={})
    assert {await answered_by(http) for _ in range(20)} == {"2"}  # no split: the newest ready version


async def test_sticky_keys_never_switch_version_while_the_weights_stay(served: Any) -> None:
    _, http, stub = served
    await admin(http, "traffic", weights={"1": 50, "2": 50}, sticky_header="X-User")
    first = {k: await answered_by(http, headers={"x-user": f"u{k}"}) for k in range(200)}
    assert set(first.values()) == {"1", "2"}
    for k in range(200):
        assert await answered_by(http, headers={"x-user": f"u{k}"}) == first[k]
        reply = await stub.ModelInfer(grpc_request(""), metadata=(("x-user", f"u{k}"),))
        assert reply.model_version == first[k]


async def test_shadow_answers_are_compared_and_dropped(served: Any) -> None:
    svc, http, _ = served
    await admin(http, "promote", version=1, alias="production")
    await admin(http, "shadow", version=2)
    for _ in range(30):
        assert await answered_by(http, "/v2/models/add/versions/production/infer") == "1"
    await asyncio.sleep(0.2)
    values = svc.registry.metrics.values
    assert values[(m.SHADOW_REQUESTS.name, ("add", "2", "compared"))] == 30
    assert values[(m.SHADOW_ROWS.name, ("add", "2"))] == 30
    assert values[(m.SHADOW_AGREEMENTS.name, ("add", "2"))] == 30  # x+1 and x+2 have the same argmax
    assert svc.registry.metrics.observations[(m.SHADOW_MAX_ABS_DIFF.name, ("add", "2"))] == [1.0] * 30
    await admin(http, "shadow", version=None)
    overview = (await http.get("/v2/admin/models")).json()["models"][0]
    assert overview["shadow"] is None and overview["aliases"] == {"production": 1}


async def test_load_and_unload_through_http_and_grpc(served: Any, repo: Path) -> None:
    _, http, stub = served
    add_versions(repo, 3)  # a new version folder
    (await http.post("/v2/repository/models/add/load", json={"parameters": {"version": "3"}})).raise_for_status()
    index = {r["version"]: r for r in (await http.post("/v2/repository/index", json={})).json()}
    assert index["3"]["state"] == "READY"
    await stub.RepositoryModelUnload(
        pb.RepositoryModelUnloadRequest(
            model_name="add", parameters={"version": pb.ModelRepositoryParameter(int64_param=1)}
        )
    )
    index = {r["version"]: r for r in (await http.post("/v2/repository/index", json={})).json()}
    assert index["1"]["state"] == "UNAVAILABLE" and index["1"]["reason"] == "unloaded"
    assert (await http.post("/v2/models/add/versions/1/infer", json=BODY)).status_code == 503
    await stub.RepositoryModelLoad(
        pb.RepositoryModelLoadRequest(
            model_name="add", parameters={"version": pb.ModelRepositoryParameter(string_param="1")}
        )
    )
    assert await answered_by(http, "/v2/models/add/versions/1/infer") == "1"
    await admin(http, "promote", version=3, alias="production")
    refused = await http.post("/v2/repository/models/add/unload", json={"parameters": {"version": 3}})
    assert refused.status_code == 409 and "aliases ['production']" in refused.json()["error"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="add"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    bad = await http.post("/v2/repository/models/add/load", json={"parameters": {"config": "{}"}})
    assert bad.status_code == 400 and "unsupported parameter" in bad.json()["error"]
    unknown = await http.post("/v2/repository/models/nope/load")
    assert unknown.status_code == 404


async def test_a_tampered_artifact_is_refused_and_the_others_serve(served: Any, repo: Path) -> None:
    _, http, _ = served
    v3 = repo / "add" / "3"
    add_versions(repo, 3)
    write_lineage(v3, Lineage(artifact=ArtifactRecord(file="model.onnx", sha256=file_sha256(v3 / "model.onnx"))))
    (await http.post("/v2/repository/models/add/load", json={"parameters": {"version": 3}})).raise_for_status()
    md = (await http.get("/v2/models/add/versions/3")).json()
    assert md["parameters"]["lineage.artifact_sha256"] == file_sha256(v3 / "model.onnx")
    shutil.copy(repo / "add" / "1" / "model.onnx", v3 / "model.onnx")  # the artifact changes under its lineage
    refused = await http.post("/v2/repository/models/add/load", json={"parameters": {"version": 3}})
    assert refused.status_code == 503 and "does not match lineage.yaml" in refused.json()["error"]
    # the version that was serving under number 3 keeps serving; a fresh server refuses it
    assert await answered_by(http, "/v2/models/add/versions/3/infer") == "3"
    fresh = LocalInferenceService.from_repository(repo)
    try:
        rows = {r.version: r for r in fresh.repository_index()}
        assert rows["3"].state == "UNAVAILABLE" and "does not match lineage.yaml" in rows["3"].reason
        assert rows["1"].state == rows["2"].state == "READY"
    finally:
        await fresh.close()


async def test_the_folder_watch_loads_a_new_version_and_unloads_a_removed_one(served: Any, repo: Path) -> None:
    svc, http, _ = served
    svc.start_watch()
    add_versions(repo, 7)
    for _ in range(100):
        if any(r.version == "7" and r.state == "READY" for r in svc.repository_index()):
            break
        await asyncio.sleep(0.1)
    assert await answered_by(http) == "7"  # served per policy: newest ready
    shutil.rmtree(repo / "add" / "7")
    for _ in range(100):
        if any(r.version == "7" and r.reason == "unloaded" for r in svc.repository_index()):
            break
        await asyncio.sleep(0.1)
    assert await answered_by(http) == "2"


async def test_routing_and_the_audit_log_survive_a_restart(served: Any, repo: Path) -> None:
    _svc, http, _ = served
    await admin(http, "promote", version=1, alias="production")
    await admin(http, "traffic", weights={"1": 80, "2": 20})
    refused = await http.post("/v2/repository/models/add/unload", json={"parameters": {"version": 2}})
    assert refused.status_code == 409 and "traffic weights" in refused.json()["error"]
    await admin(http, "traffic", weights={"1": 100})
    (await http.post("/v2/repository/models/add/unload", json={"parameters": {"version": 2}})).raise_for_status()
    not_ready = await admin(http, "traffic", 503, weights={"1": 50, "2": 50})
    assert "version 2 is not ready: unloaded" in not_ready["error"]
    again = LocalInferenceService.from_repository(repo)
    try:
        routing = again.registry.routing["add"]
        assert routing.aliases == {"production": 1} and routing.unloaded == (2,)
        assert [r.version for r in again.repository_index()] == ["1"]  # the unload holds across the restart
    finally:
        await again.close()
    entries = (await http.get("/v2/admin/audit")).json()["entries"]
    assert [e["action"] for e in entries] == ["promote", "traffic", "traffic", "unload"]


async def test_a_load_reloads_files_that_changed_after_start_up_before_any_scan(served: Any, repo: Path) -> None:
    """Start-up loads are stamped before they load: files changed since (here before the folder
    watch's first scan ever ran) are reloaded by the next load, not taken as what is serving."""
    _, http, _ = served
    shutil.copy(repo / "add" / "1" / "model.onnx", repo / "add" / "2" / "model.onnx")  # v2 now adds 1
    (await http.post("/v2/repository/models/add/load", json={"parameters": {"version": 2}})).raise_for_status()
    answer = (await http.post("/v2/models/add/versions/2/infer", json=BODY)).json()
    assert answer["outputs"][0]["data"] == [x + 1 for x in X]


async def test_changes_to_two_models_through_two_replicas_inside_one_poll_reach_both(tmp_path: Path) -> None:
    """Two replicas share the state folder. Replica A promotes one model, then replica B another,
    before either polls: B's change is written over a file that already holds A's, so B must
    serve A's change too (not only its own), and A must learn B's at its next poll."""
    repo = tmp_path / "repo"
    add_versions(repo, 1, 2)
    add_model(repo, "other", versions=(1, 2), version_policy={"all": True}, gates={"require_evaluation": False})
    a = LocalInferenceService.from_repository(repo)
    b = LocalInferenceService.from_repository(repo)
    try:
        a.start_watch(scan_repository=False)  # A polls; B never does
        async with await http_client_for(a) as via_a, await http_client_for(b) as via_b:
            for round_ in range(4):
                version = 1 + round_ % 2
                ra = await via_a.post("/v2/admin/models/add/promote", json={"version": version, "alias": "production"})
                rb = await via_b.post("/v2/admin/models/other/promote", json={"version": version, "alias": "live"})
                assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
                # B saw A's change in the file it wrote over, without polling
                assert b.registry.routing["add"].aliases["production"] == version
                for _ in range(200):  # A's next poll
                    routing = a.registry.routing.get("other")
                    if routing is not None and routing.aliases.get("live") == version:
                        break
                    await asyncio.sleep(0.01)
                for svc in (a, b):
                    assert svc.registry.routing["add"].aliases["production"] == version
                    assert svc.registry.routing["other"].aliases["live"] == version
                for http in (via_a, via_b):
                    assert await answered_by(http, "/v2/models/add/versions/production/infer") == str(version)
    finally:
        await a.close()
        await b.close()


async def test_an_unreadable_version_fails_alone_and_is_retried_once_readable(tmp_path: Path) -> None:
    """An OSError while loading one version (its lineage.yaml is a folder: IsADirectoryError)
    marks only that version unavailable, with the reason; the others serve; and since such a
    failure may pass, the repository watch tries again and serves it once it is readable."""
    repo = tmp_path / "repo"
    add_versions(repo, 1, 2)
    (repo / "add" / "1" / "lineage.yaml").mkdir()
    svc = LocalInferenceService.from_repository(repo)
    try:
        async with await http_client_for(svc) as http:
            index = {r["version"]: r for r in (await http.post("/v2/repository/index")).json()}
            assert index["1"]["state"] == "UNAVAILABLE" and "lineage.yaml" in index["1"]["reason"]
            assert index["2"]["state"] == "READY"
            assert await answered_by(http, "/v2/models/add/versions/2/infer") == "2"
            svc.start_watch()
            (repo / "add" / "1" / "lineage.yaml").rmdir()  # the transient problem goes away
            for _ in range(400):
                if svc.model_ready("add", "1"):
                    break
                await asyncio.sleep(0.025)
            assert await answered_by(http, "/v2/models/add/versions/1/infer") == "1"
    finally:
        await svc.close()

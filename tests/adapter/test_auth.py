"""API keys over both transports (ASGI app and a real grpc.aio server, no Ray): missing or
unknown key 401 / UNAUTHENTICATED, a model outside the key's list 403 / PERMISSION_DENIED,
health open, keys revoked or added in the file take effect without a restart."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest

from serving import auth
from serving.config.server import MAX_REQUEST_BYTES
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb import inference_pb2_grpc
from serving.protocol.grpc_frontends import FrontEndKind
from serving.protocol.grpc_v2 import GrpcAdapter
from serving.protocol.http import build_http_app
from serving.service.local import LocalInferenceService

from adapter_support import start_grpc

BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "keys.yaml"
    made = {
        "all": auth.create_key(path, "all"),
        "add-only": auth.create_key(path, "add-only", models=("add",)),
        "admin": auth.create_key(path, "admin", admin=True),
    }
    return path, made


@pytest.fixture
async def secured(
    service: LocalInferenceService, keys: tuple[Path, dict[str, str]], grpc_front_end: FrontEndKind
) -> AsyncIterator[tuple[httpx.AsyncClient, inference_pb2_grpc.GRPCInferenceServiceStub]]:
    authenticator = auth.Authenticator(keys[0])
    app = build_http_app(service, max_request_bytes=MAX_REQUEST_BYTES, auth=authenticator, admin=service.admin)
    server, target = await start_grpc(service, grpc_front_end, GrpcAdapter(service, authenticator, admin=service.admin))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        async with grpc.aio.insecure_channel(target) as channel:
            yield http, inference_pb2_grpc.GRPCInferenceServiceStub(channel)
    await server.stop(None)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def grpc_code(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_the_key_matrix_over_http_and_grpc(
    secured: tuple[httpx.AsyncClient, object], keys: tuple[Path, dict[str, str]]
) -> None:
    http, stub = secured
    made = keys[1]
    infer = pb.ModelInferRequest(model_name="add", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4]))])  # fmt: skip
    other = pb.ModelMetadataRequest(name="identity")
    cases = [  # (key, model, http status, grpc code)
        (None, "add", 401, grpc.StatusCode.UNAUTHENTICATED),
        ("sk-00000000.nope", "add", 401, grpc.StatusCode.UNAUTHENTICATED),
        (made["all"][:-2] + "xx", "add", 401, grpc.StatusCode.UNAUTHENTICATED),
        (made["all"], "add", 200, grpc.StatusCode.OK),
        (made["add-only"], "add", 200, grpc.StatusCode.OK),
        (made["add-only"], "identity", 403, grpc.StatusCode.PERMISSION_DENIED),
        (made["admin"], "identity", 200, grpc.StatusCode.OK),
    ]
    for key, model, status, code in cases:
        headers = bearer(key) if key else {}
        metadata = (("authorization", f"Bearer {key}"),) if key else ()
        if model == "add":
            r = await http.post("/v2/models/add/infer", json=BODY, headers=headers)
            got = await grpc_code(stub.ModelInfer(infer, metadata=metadata))
        else:
            r = await http.get("/v2/models/identity", headers=headers)
            got = await grpc_code(stub.ModelMetadata(other, metadata=metadata))
        assert (r.status_code, got) == (status, code), (key and key[:12], model)
        if status != 200:
            assert "error" in r.json() and (key is None or key not in r.text)
        if status == 401:
            assert r.headers["www-authenticate"].startswith("Bearer")
    # Health stays open; listings of every model need models '*' or admin.
    assert (await http.get("/v2/health/ready")).status_code == 200
    assert await grpc_code(stub.ServerLive(pb.ServerLiveRequest())) == grpc.StatusCode.OK
    assert (await http.get("/v2/models/stats", headers=bearer(made["add-only"]))).status_code == 403
    assert (await http.get("/v2/models/stats", headers=bearer(made["all"]))).status_code == 200
    index = stub.RepositoryIndex(
        pb.RepositoryIndexRequest(), metadata=(("authorization", f"Bearer {made['add-only']}"),)
    )
    assert await grpc_code(index) == grpc.StatusCode.PERMISSION_DENIED
    assert (await http.get("/ui/api/stats")).status_code == 401
    assert (await http.get("/ui")).status_code == 200  # the page itself asks for a key


async def test_revoked_and_new_keys_take_effect_without_a_restart(
    secured: tuple[httpx.AsyncClient, object], keys: tuple[Path, dict[str, str]]
) -> None:
    http, _ = secured
    path, made = keys
    assert (await http.post("/v2/models/add/infer", json=BODY, headers=bearer(made["all"]))).status_code == 200
    auth.revoke_key(path, "all")
    fresh = auth.create_key(path, "fresh")
    deadline = time.monotonic() + 5
    while (await http.post("/v2/models/add/infer", json=BODY, headers=bearer(made["all"]))).status_code != 401:
        assert time.monotonic() < deadline
    assert (await http.post("/v2/models/add/infer", json=BODY, headers=bearer(fresh))).status_code == 200


def test_the_keys_file_holds_no_key_and_is_private(keys: tuple[Path, dict[str, str]]) -> None:
    path, made = keys
    text = path.read_text()
    for key in made.values():
        assert key not in text and key.split(".", 1)[1] not in text
    assert path.stat().st_mode & 0o077 == 0
    with pytest.raises(Exception, match="already exists"):
        auth.create_key(path, "all")


async def test_lifecycle_operations_need_an_admin_key(
    secured: tuple[httpx.AsyncClient, object], keys: tuple[Path, dict[str, str]]
) -> None:
    """Operator routes and Triton's load/unload: 401 without a key, 403 for a key that may use
    every model but is not an admin key (nothing changes), 200 with an admin key."""
    http, stub = secured
    made = keys[1]
    promote = {"version": 1, "alias": "x"}  # refused before any change: no state is written
    for key, status in ((None, 401), (made["all"], 403)):
        headers = bearer(key) if key else {}
        assert (await http.get("/v2/admin/models", headers=headers)).status_code == status
        assert (await http.get("/v2/admin/audit", headers=headers)).status_code == status
        assert (await http.post("/v2/admin/models/add/promote", json=promote, headers=headers)).status_code == status
        assert (await http.post("/v2/repository/models/add/unload", headers=headers)).status_code == status
    denied = stub.RepositoryModelUnload(  # type: ignore[attr-defined]
        pb.RepositoryModelUnloadRequest(model_name="add"), metadata=(("authorization", f"Bearer {made['all']}"),)
    )
    assert await grpc_code(denied) == grpc.StatusCode.PERMISSION_DENIED
    anonymous = stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="add"))  # type: ignore[attr-defined]
    assert await grpc_code(anonymous) == grpc.StatusCode.UNAUTHENTICATED
    overview = await http.get("/v2/admin/models", headers=bearer(made["admin"]))
    assert overview.status_code == 200 and {m["name"] for m in overview.json()["models"]} >= {"add", "identity"}


async def test_health_can_require_a_key_and_the_replicas_own_probe_token_passes(
    service: LocalInferenceService, keys: tuple[Path, dict[str, str]], grpc_front_end: FrontEndKind
) -> None:
    authenticator = auth.Authenticator(keys[0])
    app = build_http_app(service, max_request_bytes=MAX_REQUEST_BYTES, auth=authenticator, admin=service.admin)
    app.protect_health, app.probe_token = True, "probe-secret"
    adapter = GrpcAdapter(service, authenticator, protect_health=True, probe_token="probe-secret")
    server, target = await start_grpc(service, grpc_front_end, adapter)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            for path in ("/v2/health/live", "/v2/health/ready"):
                assert (await http.get(path)).status_code == 401
                assert (await http.get(path, headers=bearer(keys[1]["add-only"]))).status_code == 200
                assert (await http.get(path, headers=bearer("probe-secret"))).status_code == 200
                assert (await http.get(path, headers=bearer("probe-secre"))).status_code == 401
        async with grpc.aio.insecure_channel(target) as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert await grpc_code(stub.ServerLive(pb.ServerLiveRequest())) == grpc.StatusCode.UNAUTHENTICATED
            token = (("authorization", "Bearer probe-secret"),)
            assert await grpc_code(stub.ServerReady(pb.ServerReadyRequest(), metadata=token)) == grpc.StatusCode.OK
    finally:
        await server.stop(None)

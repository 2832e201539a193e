"""The operator page's routes, CORS and the OpenAPI document, through the ASGI app (no browser,
no Ray): the same app the replicas serve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from serving.config.server import MAX_REQUEST_BYTES, CorsConfig
from serving.protocol.http import build_http_app
from serving.service.local import LocalInferenceService
from serving.telemetry.metrics import AggregatedMetrics

ALLOWED = "https://app.example.com"


@pytest.fixture
async def web(repository: object) -> AsyncIterator[httpx.AsyncClient]:
    from pathlib import Path

    assert isinstance(repository, Path)
    svc = LocalInferenceService.from_repository(repository, metrics=AggregatedMetrics())
    app = build_http_app(
        svc, max_request_bytes=MAX_REQUEST_BYTES, cors=CorsConfig(allow_origins=[ALLOWED, "https://*.example.org"])
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client
    await svc.registry.close()


async def test_the_page_and_its_assets_are_served_from_the_package(web: httpx.AsyncClient) -> None:
    page = await web.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/ui/app.js" in page.text and "http" not in page.text.replace("http-equiv", "").split("<body>")[0].lower()
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = await web.get(f"/ui/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    missing = await web.get("/ui/nope.js")
    assert missing.status_code == 404 and "error" in missing.json()
    assert (await web.post("/ui")).status_code == 405


async def test_stats_sum_requests_latency_batches_and_keep_recent_errors(web: httpx.AsyncClient) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    for _ in range(3):
        assert (await web.post("/v2/models/add/versions/3/infer", json=body)).status_code == 200
    bad = await web.post("/v2/models/add/versions/3/infer", json={"inputs": []}, headers={"X-Request-ID": "bad-one"})
    assert bad.status_code == 400
    doc = (await web.get("/ui/api/stats")).json()
    add3 = next(m for m in doc["models"] if (m["model"], m["version"]) == ("add", "3"))
    assert (add3["requests"], add3["failures"]) == (4, 1)
    assert sum(add3["latency_buckets"]) == 4 and len(add3["latency_buckets"]) == len(doc["latency_bounds"]) + 1
    assert add3["batches"] >= 1 and add3["batch_rows"] == 3
    error = doc["errors"][0]
    assert (error["request_id"], error["http_status"], error["grpc_status"]) == ("bad-one", 400, "INVALID_ARGUMENT")
    assert error["model"] == "add" and "inputs" in error["message"]
    states = {(v["model"], v["version"]): v for v in doc["versions"]}
    assert states[("add", "3")]["state"] == "READY" and states[("add", "3")]["device"] == "cpu"
    assert len(doc["replicas"]) == 1


async def test_cors_preflight_and_answers(web: httpx.AsyncClient) -> None:
    pre = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    ok = await web.options("/v2/models/add/infer", headers=pre)
    assert ok.status_code == 204
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "content-type" in ok.headers["access-control-allow-headers"]
    assert ok.headers.get_list("access-control-allow-origin") == [ALLOWED]  # once: browsers refuse two
    wildcard = await web.options("/v2/models/add/infer", headers={**pre, "Origin": "https://a.example.org"})
    assert wildcard.status_code == 204
    refused = await web.options("/v2/models/add/infer", headers={**pre, "Origin": "https://evil.test"})
    assert refused.status_code == 403 and "not allowed" in refused.json()["error"]
    assert "access-control-allow-origin" not in refused.headers
    answer = await web.get("/v2/health/live", headers={"Origin": ALLOWED})
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "inference-header-content-length" in answer.headers["access-control-expose-headers"]
    other = await web.get("/v2/health/live", headers={"Origin": "https://evil.test"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


async def test_cors_is_off_by_default(http: httpx.AsyncClient) -> None:
    pre = {"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
    assert (await http.options("/v2/models/add/infer", headers=pre)).status_code == 403
    assert "access-control-allow-origin" not in (await http.get("/v2", headers={"Origin": ALLOWED})).headers


async def test_the_openapi_document_is_served_and_valid(web: httpx.AsyncClient) -> None:
    from openapi_spec_validator import validate

    doc = (await web.get("/v2/openapi.json")).json()
    validate(doc)
    assert doc["openapi"].startswith("3.1") and "/v2/models/{model}/versions/{version}/infer" in doc["paths"]


async def test_the_stats_carry_the_last_minutes_when_asked(repository: object) -> None:
    """A page opened after traffic draws what the history kept, without waiting for new requests."""
    from pathlib import Path

    assert isinstance(repository, Path)
    svc = LocalInferenceService.from_repository(repository, metrics=AggregatedMetrics())
    app = build_http_app(svc, max_request_bytes=MAX_REQUEST_BYTES)
    app.operator_page.history.every_s = 0.05
    app.start_background()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            for _ in range(5):
                assert (await client.post("/v2/models/add/infer", json=body)).status_code == 200
            for _ in range(100):
                doc = (await client.get("/ui/api/stats?history=1")).json()
                seen = [sum(m["requests"] for m in h["models"] if m["model"] == "add") for h in doc["history"]]
                if seen and seen[-1] >= 5:
                    break
                await asyncio.sleep(0.05)
            assert seen and seen[-1] >= 5, doc["history"]
            assert seen == sorted(seen)  # totals, oldest first
            assert "history" not in (await client.get("/ui/api/stats")).json()
    finally:
        await app.stop_background()
        await svc.registry.close()

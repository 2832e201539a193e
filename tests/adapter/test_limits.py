from __future__ import annotations

import httpx

GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


async def test_oversized_headers_get_431_and_the_server_serves_on(http: httpx.AsyncClient) -> None:
    r = await http.post("/v2/models/add/infer", json=GOOD, headers={"x-junk": "a" * (70 * 1024)})
    assert r.status_code == 431 and "headers exceed" in r.json()["error"]
    assert (await http.post("/v2/models/add/infer", json=GOOD)).status_code == 200


async def test_a_request_id_that_cannot_be_echoed_safely_is_replaced(http: httpx.AsyncClient) -> None:
    long_id = "r" * 500
    r = await http.post("/v2/models/add/infer", json=GOOD, headers={"x-request-id": long_id})
    assert r.status_code == 200 and r.headers["x-request-id"] != long_id and len(r.headers["x-request-id"]) == 16
    ok = await http.post("/v2/models/add/infer", json=GOOD, headers={"x-request-id": "client-42"})
    assert ok.headers["x-request-id"] == "client-42"

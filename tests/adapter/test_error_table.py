"""Walk every ErrorKind through both adapters and check the codes come from the one table."""

from __future__ import annotations

import grpc
import pytest

from serving import errors
from serving.errors import ErrorKind, ServingError
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb.inference_pb2_grpc import GRPCInferenceServiceStub
from serving.protocol.status import STATUS
from serving.service.local import LocalInferenceService
from serving.types import InferenceRequest, InferenceResponse

from adapter_support import http_client_for, start_grpc

ERROR_FOR_KIND = {
    cls.kind: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, ServingError) and cls is not ServingError
}
ERROR_FOR_KIND[ErrorKind.INTERNAL] = errors.ModelExecutionError


class RaisingService(LocalInferenceService):
    """The real service, except that ``infer`` raises the error a test chose."""

    def __init__(self, base: LocalInferenceService, error: Exception) -> None:
        super().__init__(base.registry)
        self.error = error

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        raise self.error


def test_every_kind_has_a_row_and_a_class() -> None:
    assert set(STATUS) == set(ErrorKind)
    assert set(ERROR_FOR_KIND) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind), ids=lambda k: k.value)
async def test_kind_maps_to_table_codes(service: LocalInferenceService, kind: ErrorKind) -> None:
    svc = RaisingService(service, ERROR_FOR_KIND[kind]("secret detail"))
    http_status, grpc_status = STATUS[kind]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
    async with await http_client_for(svc) as http:
        r = await http.post("/v2/models/add/infer", json=body)
    assert r.status_code == http_status
    assert ("Retry-After" in r.headers) == (kind is ErrorKind.OVERLOADED)
    shown = r.json()["error"]
    assert ("secret detail" in shown) == (kind is not ErrorKind.INTERNAL)

    server, target = await start_grpc(svc)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            req = pb.ModelInferRequest(model_name="add")
            req.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0.0] * 4)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await GRPCInferenceServiceStub(channel).ModelInfer(req)
    finally:
        await server.stop(None)
    assert info.value.code() == grpc_status
    assert ("secret detail" in (info.value.details() or "")) == (kind is not ErrorKind.INTERNAL)


async def test_unexpected_exceptions_are_internal_without_details(service: LocalInferenceService) -> None:
    svc = RaisingService(service, KeyError("private"))
    async with await http_client_for(svc) as http:
        r = await http.post(
            "/v2/models/add/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]},
        )
    assert r.status_code == 500 and "private" not in r.text
    assert grpc.StatusCode.INTERNAL == STATUS[ErrorKind.INTERNAL][1]

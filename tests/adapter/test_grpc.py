from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import codecs
from serving.protocol._pb import inference_pb2 as pb
from serving.protocol._pb.inference_pb2_grpc import GRPCInferenceServiceStub
from serving.protocol.grpc_frontends import FrontEndKind
from serving.service.local import LocalInferenceService

from adapter_support import identity_values, start_grpc
from models import IDENTITY_TYPES, spin_model

TYPED_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def identity_request(raw: bool) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="identity" if raw else "identity_typed", id="g-1")
    for dt in IDENTITY_TYPES if raw else TYPED_FIELD:
        arr = identity_values(dt)
        t = req.inputs.add(name=f"in_{dt.lower()}", datatype=dt, shape=arr.shape)
        if raw:
            req.raw_input_contents.append(codecs.to_raw(arr, dt))
        else:
            getattr(t.contents, TYPED_FIELD[dt]).extend(list(arr.reshape(-1)))
    return req


def outputs_of(resp: pb.ModelInferResponse) -> dict[str, np.ndarray[Any, Any]]:
    out = {}
    for i, o in enumerate(resp.outputs):
        if resp.raw_output_contents:
            out[o.name] = codecs.from_raw(o.datatype, o.shape, resp.raw_output_contents[i], o.name)
        else:
            values = list(getattr(o.contents, TYPED_FIELD[o.datatype]))
            if o.datatype == "BYTES":
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                out[o.name] = arr.reshape(o.shape)
            else:
                out[o.name] = np.array(values, dtype=codecs.numpy_dtype(o.datatype)).reshape(o.shape)
    return out


async def test_health_metadata_config(stub: GRPCInferenceServiceStub, grpc_target: str) -> None:
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="add", version="2"))).ready
    md = await stub.ModelMetadata(pb.ModelMetadataRequest(name="add"))
    assert list(md.versions) == ["3", "2"] and list(md.inputs[0].shape) == [-1, 4]
    cfg = (await stub.ModelConfig(pb.ModelConfigRequest(name="add"))).config
    assert cfg.max_batch_size == 16 and cfg.input[0].data_type == pb.TYPE_FP32 and list(cfg.input[0].dims) == [4]
    assert "statistics" in (await stub.ServerMetadata(pb.ServerMetadataRequest())).extensions
    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert {(m.name, m.version, m.state) for m in index.models} >= {("add", "3", "READY"), ("add", "2", "READY")}
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        ok = await health.Check(health_pb2.HealthCheckRequest())
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health.Check(health_pb2.HealthCheckRequest(service="other"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
async def test_every_datatype_round_trips(stub: GRPCInferenceServiceStub, raw: bool) -> None:
    req = identity_request(raw)
    resp = await stub.ModelInfer(req)
    assert resp.id == "g-1" and resp.model_version == "1"
    assert bool(resp.raw_output_contents) == raw
    out = outputs_of(resp)
    for t in req.inputs:
        np.testing.assert_array_equal(out[t.name.replace("in_", "out_")], identity_values(t.datatype))


async def test_statistics(stub: GRPCInferenceServiceStub) -> None:
    req = pb.ModelInferRequest(model_name="add", model_version="2")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend([0.0] * 8)
    resp = await stub.ModelInfer(req)
    assert list(resp.outputs[0].contents.fp32_contents) == [2.0] * 8
    stats = (await stub.ModelStatistics(pb.ModelStatisticsRequest(name="add", version="2"))).model_stats[0]
    assert stats.inference_count == 2 and stats.execution_count == 1
    assert stats.batch_stats[0].batch_size == 2 and stats.inference_stats.success.count == 1


async def test_classification_answers_the_top_classes(stub: GRPCInferenceServiceStub) -> None:
    req = pb.ModelInferRequest(model_name="add")
    req.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend([1, 2, 3, 4, 8, 0, 9, 1])
    req.outputs.add(name="y").parameters["classification"].int64_param = 2
    resp = await stub.ModelInfer(req)
    assert (resp.outputs[0].datatype, list(resp.outputs[0].shape)) == ("BYTES", [2, 2])
    assert outputs_of(resp)["y"].tolist() == [[b"7.000000:3", b"6.000000:2"], [b"12.000000:2", b"11.000000:0"]]


def ranked(count: pb.InferParameter) -> pb.ModelInferRequest:
    req = infer_req()
    req.outputs.add(name="y").parameters["classification"].CopyFrom(count)
    return req


def infer_req(**change: Any) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=change.pop("model", "add"), model_version=change.pop("version", ""))
    t = req.inputs.add(
        name=change.pop("name", "x"), datatype=change.pop("datatype", "FP32"), shape=change.pop("shape", [1, 4])
    )
    if "raw" in change:
        req.raw_input_contents.extend(change.pop("raw"))
    else:
        t.contents.fp32_contents.extend(change.pop("values", [1.0, 2.0, 3.0, 4.0]))
    assert not change
    return req


GRPC_ERRORS = [
    ("unknown model", infer_req(model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
    ("unknown version", infer_req(version="9"), grpc.StatusCode.NOT_FOUND, "no version 9"),
    ("wrong shape", infer_req(shape=[2, 2]), grpc.StatusCode.INVALID_ARGUMENT, "expects [-1, 4]"),
    ("wrong datatype", infer_req(datatype="FP64", raw=[b"\0" * 32]), grpc.StatusCode.INVALID_ARGUMENT, "expects FP32"),
    ("data disagrees with shape", infer_req(values=[1.0]), grpc.StatusCode.INVALID_ARGUMENT, "needs 4 elements"),
    ("raw size disagrees", infer_req(raw=[b"\0" * 15]), grpc.StatusCode.INVALID_ARGUMENT, "needs 16 bytes"),
    ("raw count disagrees", infer_req(raw=[b"\0" * 16, b""]), grpc.StatusCode.INVALID_ARGUMENT, "2 entries for 1"),
    ("extra input", infer_req(name="z"), grpc.StatusCode.INVALID_ARGUMENT, "unexpected input 'z'"),
    ("unknown datatype", infer_req(datatype="FLOAT"), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype"),
    ("FP16 typed", infer_req(datatype="FP16"), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    ("failing batch", infer_req(model="broken", shape=[2, 2]), grpc.StatusCode.INTERNAL, "internal error"),
    ("classification 0", ranked(pb.InferParameter(int64_param=0)), grpc.StatusCode.INVALID_ARGUMENT, "positive"),
    ("classification text", ranked(pb.InferParameter(string_param="2")), grpc.StatusCode.INVALID_ARGUMENT, "positive"),
]


@pytest.mark.parametrize(("request_", "code", "message"), [c[1:] for c in GRPC_ERRORS], ids=[c[0] for c in GRPC_ERRORS])
async def test_error_rows_then_a_success(
    stub: GRPCInferenceServiceStub, request_: pb.ModelInferRequest, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request_)
    assert info.value.code() == code
    assert message in (info.value.details() or "")
    assert (await stub.ModelInfer(infer_req())).outputs[0].name == "y"


async def test_malformed_protobuf_is_invalid_argument(grpc_target: str, stub: GRPCInferenceServiceStub) -> None:
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"\xff\xff\xff\xff garbage")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed protobuf" in (info.value.details() or "")
    assert (await stub.ModelInfer(infer_req())).outputs[0].name == "y"


async def test_calls_cancelled_mid_flight_leave_nothing_in_flight(tmp_path: Path, grpc_front_end: FrontEndKind) -> None:
    """Clients that cancel calls the server is working on cancel its handlers
    (asyncio.CancelledError, not an Exception): each call must still leave the in-flight count
    the autoscaler reads, and the count must return to 0."""
    spin_model(tmp_path, max_batch_size=1)
    service = LocalInferenceService.from_repository(tmp_path)
    server, target = await start_grpc(service, grpc_front_end)
    try:
        request = pb.ModelInferRequest(model_name="spin")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0.0] * 4)
        request.inputs.add(name="spins", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(3000)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = GRPCInferenceServiceStub(channel)
            await stub.ModelInfer(request)  # connected and warm
            for _ in range(3):
                calls = [stub.ModelInfer(request) for _ in range(200)]
                for _ in range(500):  # until the server is working on them
                    if service.in_flight_and_queued()[0] >= 10:
                        break
                    await asyncio.sleep(0.002)
                assert service.in_flight_and_queued()[0] >= 10
                for call in calls:
                    call.cancel()
                ends = await asyncio.gather(*(_code_of(c) for c in calls))
                assert ends.count("cancelled") > 100, collections.Counter(ends)
                for _ in range(500):  # the server hears of each cancellation shortly after the client
                    if service.in_flight_and_queued()[0] == 0:
                        break
                    await asyncio.sleep(0.01)
                assert service.in_flight_and_queued() == (0, 0)
            answer = await stub.ModelInfer(request)  # and serves on
            assert answer.model_name == "spin"
    finally:
        await server.stop(None)
        await service.close()


async def _code_of(call: Any) -> str:
    try:
        await call
    except asyncio.CancelledError:
        return "cancelled"
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return "OK"

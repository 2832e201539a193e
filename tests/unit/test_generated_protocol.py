"""Serve's Python gRPC proxy pickles requests and responses on their way to the replica."""

from __future__ import annotations

import pickle

import pytest
from grpc_health.v1 import health_pb2

from serving.protocol._pb import inference_pb2 as pb
from serving.protocol.grpc_v2 import MalformedRequest

MESSAGES = [
    pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00"]),
    pb.ModelInferResponse(model_name="m"),
    pb.ModelMetadataRequest(name="m"),
    pb.ModelConfigResponse(),
    pb.RepositoryIndexResponse(),
    health_pb2.HealthCheckRequest(service=""),
    MalformedRequest("bad bytes"),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_wire_messages_pickle_by_their_real_module(message: object) -> None:
    assert type(message).__module__.split(".")[0] in ("serving", "grpc_health")
    assert pickle.loads(pickle.dumps(message)) == message
